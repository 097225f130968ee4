"""Commands of the `ee` command line, each module thin over the Python API."""
