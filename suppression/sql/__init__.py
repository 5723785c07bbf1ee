"""SQL written once for both stores: table declarations that make each backend's DDL,
statements with ``$n`` placeholders, and the store operations over a small driver."""
