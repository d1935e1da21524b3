"""Telephony voice gateway: Twilio and Asterisk calls to Hamsa speech and an agent webhook."""

__version__ = "0.1.0"
