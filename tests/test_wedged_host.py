"""A wedged QEMU on a real Proxmox host, at the shipped timeouts: the host's view still arrives.

A real host's ``status`` on a wedged QEMU waits out the forced command's QMP
timeout, then asks ``qm list`` (deploy/pve/breakglass-verbs): seconds, not the
simulator's usual 0.2 s. Here the simulator waits as long as a real host may,
and the watchdog runs with the shipped probe timeouts (only the hung guest
login's connect timeout stays the test profile's, to keep the test short).
The probe round and the policy's evidence must both carry the Proxmox view,
and the policy must allow the ``cycle`` an I/O stall needs: were ``status`` to
time out, the policy would refuse every power verb ("no power verb without its
view") and the stall would end escalated instead of cycled.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from harness import override
from servers import Servers

from breakglass.config import ProbeSettings
from breakglass.core import Core
from breakglass.incidents import policy
from breakglass.metrics import Metrics
from breakglass.remote import Verb
from breakglass.sim.vm import REAL_HOST_WEDGED_STATUS_SECONDS, SimTiming
from breakglass.store import Store
from breakglass.watchdog.probes import Readings, probe_target

# Every shipped timeout but the connect timeout (a hung login waits it out in full).
SHIPPED_TIMEOUTS = {
    key: value
    for key, value in ProbeSettings().model_dump().items()
    if key.endswith("_timeout_seconds") and key != "connect_timeout_seconds"
}


def test_an_io_stall_on_a_real_host_keeps_the_host_view_and_gets_its_cycle(
    servers: Servers, tmp_path: Path
) -> None:
    timing = dataclasses.replace(
        SimTiming.profile("test"), qmp_timeout_seconds=REAL_HOST_WEDGED_STATUS_SECONDS
    )
    sim = servers.sim(tmp_path / "sim", "test", timing=timing)
    cfg = override(sim.config, probe=SHIPPED_TIMEOUTS)
    store = Store(tmp_path / "core.db")
    # The core's own clients, built from the config the way it probes and gathers evidence.
    core = Core(cfg, store=store, metrics=Metrics())
    rt = core.targets[cfg.targets[0].name]
    sim.inject("io_stall")

    async def look() -> tuple[Readings, policy.Evidence]:
        try:
            readings, evidence = await asyncio.gather(
                probe_target(rt.target, cfg.probe, links=rt.links), policy.observe(rt.shell, rt.pve)
            )
            return readings, evidence
        finally:
            await rt.links.close()

    try:
        readings, ev = asyncio.run(look())
    finally:
        store.close()
    assert readings.pve_ok, readings.pve_error
    assert readings.qmp_ok is False
    assert ev.ssh != "ok"
    assert ev.pve_error is None, ev.pve_error
    assert "QMP unresponsive" in ev.qemu_wedged()
    cycle = policy.verdict(Verb.CYCLE, ev)
    assert cycle.allowed, cycle.reason
    reset = policy.verdict(Verb.RESET, ev)
    assert not reset.allowed
    assert reset.instead is Verb.CYCLE
