"""Partner offers: the submission listener and the fan-out that mails them."""
