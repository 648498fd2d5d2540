"""The command API's routes, one module per resource."""
