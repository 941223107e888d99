"""What regd tells operators about itself: metrics and structured logs."""
