"""What both APIs share: tokens and RBAC, problems, middleware, health, strict JSON bodies,
text fields, serving, and the common dependencies and JSON reply."""
