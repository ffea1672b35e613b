"""Who is in the flock.

`swim` is SWIM with Lifeguard for flocks of thousands, a pure state machine, the agent's
default membership (driven over nng by `driver`); `sim` runs it on a virtual clock and a
simulated network. `heartbeat` is the former full mesh (`--membership mesh`), whose member
and transition shapes both share.
"""

from flock_node.membership.heartbeat import (
    ALIVE,
    CLASH,
    DOWN,
    LEFT,
    MAX_INTERVAL,
    MIN_INTERVAL,
    SUSPECT,
    Member,
    Membership,
    Transition,
    admit,
)
from flock_node.membership.messages import FORGOTTEN

__all__ = ["ALIVE", "CLASH", "DOWN", "FORGOTTEN", "LEFT", "MAX_INTERVAL", "MIN_INTERVAL",
           "SUSPECT", "Member", "Membership", "Transition", "admit"]
