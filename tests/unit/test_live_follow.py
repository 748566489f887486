"""follow_gpu: keyboard and mouse go where the live GPU went (the session wires the hook)."""

from __future__ import annotations

from pathlib import Path

from handoff.base.host import HostPaths
from handoff.input.edge import InputRouter
from handoff.input.resource import InputHandoff
from handoff.input.router import RouterCore
from handoff.live.resource import LiveGpu
from handoff.live.state import LiveState
from handoff.profile import InputMode, parse_profile
from handoff.session.host_facts import gather_host_facts
from handoff.session.plan import plan_session
from handoff.session.supervisor import default_resources
from tests.unit.test_input_resource import KEY_SCROLLLOCK, Guest

PROFILE = (
    '[vm]\nname = "p"\nmemory = "64M"\n'
    '[[passthrough]]\naddress = "00:06.0"\nlive = true\n'
    '[input]\nbackend = "qmp"\nfollow_gpu = {follow}\n'
)


def resources(tmp_path: Path, follow: bool) -> tuple[LiveGpu, InputHandoff]:
    profile = parse_profile(PROFILE.format(follow=str(follow).lower()), tmp_path / "p.toml")
    paths = HostPaths(run=tmp_path / "run")
    plan = plan_session(profile, gather_host_facts(profile, paths, strict=False), paths)
    found = default_resources(plan, paths)
    assert [r.name for r in found] == ["live-gpu", "input"]
    live, inputs = found
    assert isinstance(live, LiveGpu)
    assert isinstance(inputs, InputHandoff)
    inputs._router = InputRouter(RouterCore(frozenset({KEY_SCROLLLOCK}), InputMode.HOST),
                                 Guest())
    return live, inputs


async def test_input_follows_the_live_gpu_both_ways(tmp_path: Path) -> None:
    live, inputs = resources(tmp_path, follow=True)
    assert live.on_moved is not None
    await live.on_moved(LiveState.IN_GUEST)
    assert inputs.status()["mode"] == "guest"
    await live.on_moved(LiveState.ON_HOST)
    assert inputs.status()["mode"] == "host"


async def test_without_follow_gpu_input_stays_where_it_is(tmp_path: Path) -> None:
    live, inputs = resources(tmp_path, follow=False)
    assert live.on_moved is None
    await inputs.follow_gpu(True)
    assert inputs.status()["mode"] == "host"


async def test_hooks_hear_of_every_gpu_move_and_input_move_and_input_still_follows(
    tmp_path: Path,
) -> None:
    """The session wires [[hook]]: gpu-guest/gpu-host from the live GPU's moves (before
    input follows), guest/host from the router's mode changes (follow_gpu's included)."""
    from handoff.hooks.runner import HookRunner
    from handoff.profile import HookEvent

    text = PROFILE.format(follow="true") + "".join(
        f'[[hook]]\non = "{on}"\nrun = ["true"]\n'
        for on in ("gpu-guest", "gpu-host", "guest", "host")
    )
    profile = parse_profile(text, tmp_path / "p.toml")
    paths = HostPaths(run=tmp_path / "run")
    plan = plan_session(profile, gather_host_facts(profile, paths, strict=False), paths)
    hooks, live, inputs = default_resources(plan, paths)
    assert isinstance(hooks, HookRunner)
    assert isinstance(live, LiveGpu)
    assert isinstance(inputs, InputHandoff)
    inputs._router = InputRouter(RouterCore(frozenset({KEY_SCROLLLOCK}), InputMode.HOST),
                                 Guest(), on_mode=inputs._mode_changed)
    fired: list[HookEvent] = []
    hooks.fire = fired.append  # type: ignore[method-assign,assignment]
    assert live.on_moved is not None
    await live.on_moved(LiveState.IN_GUEST)
    assert inputs.status()["mode"] == "guest"
    await live.on_moved(LiveState.ON_HOST)
    assert inputs.status()["mode"] == "host"
    assert fired == [HookEvent.GPU_GUEST, HookEvent.GUEST, HookEvent.GPU_HOST, HookEvent.HOST]
