"""The queue controller: watches pods and nodes, grants slices in order, tells users where they stand.

One module per job, each depending only on those listed after it:

``queue_controller``  ``QueueController``: the watches, leadership, and the leader's pass, which
                      holds the grant path
``positions``         position Events for queued pods, with a wait estimate
``stuck``             stuck heads (I7): reported once, released per policy
``gate``              the guarded patch that removes our gate from one pod
``events``            the Event queue and its writers, off the grant path
``store_breaker``     the optional queue store behind a breaker
``records``           pod views as queue entries and holders
``cache``             the watch cache: pods and nodes, and the plans made from them

A freed slice, end to end: the holder's pod is deleted; ``WatchCache.pod_changed`` keeps its last
view in ``gone`` and wakes the leader's loop; ``QueueController.sync_once`` forgets it (the slice
is seen free), plans every pool from the cache (``webhook.grants.plan``) and ``_grant`` hands the
slice to the head: ``gate.ungate`` removes its gate, the cache counts it as holding at once, and
the index and the Events follow.
"""

from webhook.controller.queue_controller import QueueController

__all__ = ["QueueController"]
