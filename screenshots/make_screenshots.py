"""Regenerate the README's screenshots: the real app, driven with Pilot on the demo store and scripted engine.

    .venv/bin/python screenshots/make_screenshots.py        # writes screenshots/*.svg

The scenes are the ones the snapshot tests check (chatglm_tui/tui/demo.py), so the pictures show tested screens.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


async def shoot(name: str, theme: str | None = None) -> Path:
    from chatglm_tui.tui.demo import SCENES, SCREEN_SIZE, build_demo_app

    scene = SCENES[name]
    with tempfile.TemporaryDirectory() as scratch:
        app = build_demo_app(Path(scratch) / "demo.sqlite3", theme=theme)
        async with app.run_test(size=SCREEN_SIZE) as pilot:
            await scene(pilot)
            filename = f"{name}{'-' + theme if theme else ''}.svg"
            app.save_screenshot(filename, str(HERE))
        app.store.close()
    return HERE / filename


async def main() -> None:
    # Keep the user's real data and config out of it, whatever CHATGLM_HOME says.
    os.environ["CHATGLM_HOME"] = tempfile.mkdtemp(prefix="chatglm-screenshots-")
    shots = [(name, None) for name in ("empty", "reply-with-code", "meter-near-full", "sessions", "help")]
    shots.append(("reply-with-code", "chatglm-light"))
    for name, theme in shots:
        print(await shoot(name, theme))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    asyncio.run(main())
