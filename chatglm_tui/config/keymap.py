"""The chat app's key bindings as data: every binding id, its default keys and where it applies.

This is the one home of the default keys. It imports no Textual, so `chatglm config show` can check a `[keymap]`
table with it, and the chat app's Textual bindings take their keys from it (`default_keys`; the help, load-error
and small dialogs still spell theirs out, and a test keeps every declared key equal to this table). What a key
does there (its action, label and tooltip) stays with the widget that binds it.

A `[keymap]` entry replaces every default key of its id. Two ids end up in conflict when they are live at the same
time (their scopes are on one chain: the prompt sits in the chat screen, which sits in the app) and share a key:
only one of them can run, whichever Textual checks first.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple


class Scope(NamedTuple):
    """A part of the app where bindings apply, and the part it sits in."""

    where: str  # for messages: "ctrl+o is bound to ... {where}"
    inside: str | None  # the scope whose bindings are live here too


SCOPES: dict[str, Scope] = {
    "app": Scope("anywhere", None),
    "chat": Scope("on the chat screen", "app"),
    "prompt": Scope("on the prompt", "chat"),
    "message": Scope("on a focused message", "chat"),
    "sidebar": Scope("in the conversation filter", "chat"),
    "dialog": Scope("in dialogs", "app"),
    "settings": Scope("in the conversation settings", "dialog"),
    "help": Scope("in the help", "app"),
}


class BindingSpec(NamedTuple):
    """A binding id's default keys and where it applies."""

    keys: str  # the default keys, comma-separated as Textual writes them
    scope: str


BINDINGS: dict[str, BindingSpec] = {
    "app.help": BindingSpec("f1", "app"),
    "app.quit": BindingSpec("ctrl+q", "app"),
    "chat.stop": BindingSpec("escape", "chat"),
    "chat.regenerate": BindingSpec("ctrl+r", "chat"),
    "chat.edit": BindingSpec("f5", "chat"),
    "chat.copy_reply": BindingSpec("ctrl+y", "chat"),
    "chat.copy_code": BindingSpec("ctrl+b", "chat"),
    "chat.editor": BindingSpec("ctrl+g", "chat"),
    "chat.new": BindingSpec("ctrl+n", "chat"),
    "chat.find": BindingSpec("ctrl+o", "chat"),
    "chat.sidebar": BindingSpec("ctrl+s", "chat"),
    "chat.rename": BindingSpec("f2", "chat"),
    "chat.settings": BindingSpec("f3", "chat"),
    "chat.export": BindingSpec("f4", "chat"),
    "chat.continue": BindingSpec("f9", "chat"),
    "chat.attach": BindingSpec("ctrl+f", "chat"),
    "chat.delete": BindingSpec("f8", "chat"),
    "chat.page_up": BindingSpec("pageup", "chat"),
    "chat.page_down": BindingSpec("pagedown", "chat"),
    "chat.send": BindingSpec("enter", "prompt"),
    # ctrl+j is the one every terminal sends alike; alt+enter arrives as ESC CR from tmux and many terminals.
    "chat.newline": BindingSpec("ctrl+j,alt+enter,shift+enter", "prompt"),
    "chat.history_previous": BindingSpec("up", "prompt"),
    "chat.history_next": BindingSpec("down", "prompt"),
    "message.previous": BindingSpec("up", "message"),
    "message.next": BindingSpec("down", "message"),
    "message.copy": BindingSpec("y", "message"),
    "message.copy_code": BindingSpec("c", "message"),
    "message.edit": BindingSpec("e", "message"),
    "message.older_version": BindingSpec("left,[", "message"),
    "message.newer_version": BindingSpec("right,]", "message"),
    "sidebar.list": BindingSpec("down", "sidebar"),
    "modal.cancel": BindingSpec("escape", "dialog"),
    "modal.save": BindingSpec("ctrl+s", "settings"),
    # F1 in the help closes it: app.help shares the key there on purpose (defaults never count as a conflict).
    "modal.close": BindingSpec("escape,f1,q", "help"),
}
KNOWN_IDS = frozenset(BINDINGS)


def default_keys(binding_id: str) -> str:
    """The default keys of a binding id (a KeyError for an id that is not in the table)."""
    return BINDINGS[binding_id].keys


def key_names(keys: str) -> dict[str, str]:
    """`keys` as Textual matches them (split on commas, a lone symbol by its name: `[` is left_square_bracket),
    each mapped to the way it was written."""
    written = [key.strip() for key in keys.split(",") if key.strip()]
    return {unicodedata.name(key).lower().replace("-", "_").replace(" ", "_")
            if len(key) == 1 and not key.isalnum() else key: key for key in written}


def unknown_binding_ids(keymap: Mapping[str, str]) -> list[str]:
    """The keymap's ids that name no binding (typos), sorted."""
    return sorted(set(keymap) - KNOWN_IDS)


@dataclass(frozen=True)
class KeyConflict:
    """One key given to several binding ids that are live at the same time, at least one of them by the keymap."""

    key: str
    ids: tuple[str, ...]  # sorted
    remapped: tuple[str, ...]  # those of `ids` whose keys the keymap set
    where: str

    def describe(self) -> str:
        """What is wrong and what to change, in one sentence (the app's notice, `config show`'s comment)."""
        named = [f"{binding_id} ({'[keymap]' if binding_id in self.remapped else 'default'})"
                 for binding_id in self.ids]
        change = " or ".join(self.remapped)
        return (f"{self.key} is bound to {' and '.join(named)} {self.where}, so only one of them works: "
                f"give {change} another key in [keymap]")


def _chain(scope: str) -> list[str]:
    """The scope and every scope it sits in, innermost first."""
    chain: list[str] = []
    current: str | None = scope
    while current is not None:
        chain.append(current)
        current = SCOPES[current].inside
    return chain


def binding_conflicts(keymap: Mapping[str, str]) -> list[KeyConflict]:
    """Keys bound to two or more ids live together once `keymap` is applied, except overlaps of defaults."""
    effective = {binding_id: key_names(keymap.get(binding_id, spec.keys)) for binding_id, spec in BINDINGS.items()}
    found: dict[tuple[str, tuple[str, ...]], KeyConflict] = {}
    for scope in SCOPES:
        chain = _chain(scope)
        by_key: dict[str, list[str]] = {}
        for binding_id, spec in BINDINGS.items():
            if spec.scope in chain:
                for key in effective[binding_id]:
                    by_key.setdefault(key, []).append(binding_id)
        for key, ids in by_key.items():
            remapped = tuple(sorted(i for i in ids if i in keymap and key not in key_names(BINDINGS[i].keys)))
            if len(ids) < 2 or not remapped or (key, tuple(sorted(ids))) in found:
                continue
            innermost = min((BINDINGS[i].scope for i in ids), key=chain.index)
            found[key, tuple(sorted(ids))] = KeyConflict(effective[remapped[0]][key], tuple(sorted(ids)), remapped,
                                                         SCOPES[innermost].where)
    return sorted(found.values(), key=lambda conflict: (conflict.key, conflict.ids))
