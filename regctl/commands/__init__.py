"""One module per command group; each is thin: parse, call the client, render."""
