"""`chatglm serve`: an OpenAI-compatible HTTP API on the engine (Starlette routes, run by uvicorn)."""
