"""The views under the hidden /.nccidfs/ folder."""
