"""The inference engine: one worker thread owns the model; requests in, events out. No UI code here."""
