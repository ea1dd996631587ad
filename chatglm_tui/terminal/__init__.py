"""What reaches a terminal from anywhere in the program: untrusted text made inert, and the signals that stop.

Leaf package (standard library only): the store, the chat app and the commands all use it.
"""
