"""What a CPR responder answers to an alert (pure)."""

from __future__ import annotations

from typing import Final, Literal

ResponseStatus = Literal["responding", "on_scene", "declined"]
# Also the actions the responder's push offers, in the order the app shows them.
RESPONSE_STATUSES: Final = ("responding", "on_scene", "declined")
# The iOS notification category the app registers with these three actions.
IOS_RESPONDER_CATEGORY: Final = "GEOPUSH_RESPONDER"
