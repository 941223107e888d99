"""Test support shared by every test package: real server processes, PostgreSQL databases,
OCI image builders and a deliberately small registry HTTP client."""
