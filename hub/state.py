"""Everything one hub process holds, built once by ``create_app`` and passed to the endpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket

from frontend.render import Renderer
from hub.domain.idle import IdleHolders
from hub.fanout import Fanout
from hub.registry import NodeRegistry
from hub.scene import Scene
from hub.settings import HubSettings

if TYPE_CHECKING:
    from hub.agent_ws import RateLimit


@dataclass(slots=True)
class HubState:
    settings: HubSettings
    registry: NodeRegistry
    renderer: Renderer
    scene: Scene
    fanout: Fanout
    idle_holders: IdleHolders
    agent_sockets: dict[str, tuple[int, WebSocket]] = field(default_factory=dict)
    hello_limits: dict[str, RateLimit] = field(default_factory=dict)  # per node name
