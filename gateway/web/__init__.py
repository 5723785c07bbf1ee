"""The web listeners: the unsubscribe endpoint, its pages, held changes, the admin side."""
