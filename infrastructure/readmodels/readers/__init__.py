"""What the query API reads from the read models, one module per resource: each reader
takes the read store (or one of its connections) and plain, already-validated arguments,
and returns records; the SQL lives here, the HTTP in the routes."""
