"""Conversations as the user sees them: the reply tree, the model's history of a branch, saving each turn under
the question it answers. Used by `chatglm ask` and the chat app alike; knows nothing of widgets or torch."""
