"""The task conversation: task-scoped mailboxes, the request policy, timers.

Being filled: :mod:`fedloom.session.policy` lives here already; the task mailboxes
(``fedloom.transport.task``) join it when the layout moves them.
"""
