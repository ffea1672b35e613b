"""Who is in the flock.

`heartbeat` is the state machine the agent runs today (heartbeats over a Bus0 full mesh);
`swim` is SWIM with Lifeguard for flocks of thousands, a pure state machine not yet driven
over nng; `sim` runs it on a virtual clock and a simulated network.
"""

from flock_node.membership.heartbeat import (
    ALIVE,
    CLASH,
    DOWN,
    FORGOTTEN,
    LEFT,
    MAX_INTERVAL,
    MIN_INTERVAL,
    SUSPECT,
    Member,
    Membership,
    Transition,
    admit,
)

__all__ = ["ALIVE", "CLASH", "DOWN", "FORGOTTEN", "LEFT", "MAX_INTERVAL", "MIN_INTERVAL",
           "SUSPECT", "Member", "Membership", "Transition", "admit"]
