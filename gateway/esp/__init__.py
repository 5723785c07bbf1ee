"""ESP webhooks in: bounces, complaints and unsubscribes an ESP reports over HTTP.

One module per vendor (ses.py over sns.py, sendgrid.py, mailgun.py, postmark.py)
authenticates its requests and turns them into the inbound path's Classifications;
routes.py serves them and applies them through gateway/inbound/apply.py.
"""
