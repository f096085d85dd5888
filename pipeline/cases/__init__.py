"""Cases: a customer's exceptions as the staff who answer them see them (issue 22)."""
