"""The outbound path, declared: each pipeline is the ordered list of its steps
(GNU Mailman's pipelines/builtin.py is the model). ``steps.run`` walks one over a Mail.

    OUTBOUND        a message the SMTP handler (gateway/smtp/server.py) received
    PARTNER_OFFERS  a batch of a partner offer's claimed copies (gateway/partners/fanout.py): the
                    same way, with the offer's class, the offer queue's commit point and
                    its record

docs/ARCHITECTURE.md draws what each step reads and writes.
"""

from __future__ import annotations

from gateway.outbound.steps import (
    Classify,
    Decide,
    Record,
    RelayHeld,
    Render,
    Sign,
    SkipDelivered,
    Steps,
)
from gateway.partners.steps import ClassifyOffer, RecordClaimed, RelayClaimed

decide, skip_delivered, render, sign = Decide(), SkipDelivered(), Render(), Sign()

OUTBOUND: Steps = (
    Classify(),
    decide,
    skip_delivered,
    render,
    sign,
    RelayHeld(),
    Record(),
)

PARTNER_OFFERS: Steps = (
    ClassifyOffer(),
    decide,
    skip_delivered,
    render,
    sign,
    RelayClaimed(),
    RecordClaimed(),
)
