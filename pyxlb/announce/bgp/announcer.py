"""`BgpAnnouncer`: the `Announcer` of mode "bgp". It keeps the set of announced addresses
and reconfigures this node's BIRD once per change (`sync` batches)."""

from __future__ import annotations

import ipaddress
import logging
from typing import Dict, FrozenSet, Iterable, Optional, Set, Tuple

from .. import Announcer, IPAddress, Result, address_order
from .birdconf import announced_in, bird_config
from .settings import BgpSettings
from .speaker import BirdError, BirdSpeaker

log = logging.getLogger("pyxlb.announce.bgp")


class BgpAnnouncer(Announcer):
    """Announces VIP addresses through this node's BIRD. `last_error` holds the message of
    the last RETRY or GIVE_UP."""

    mode = "bgp"

    def __init__(self, settings: BgpSettings, speaker: Optional[BirdSpeaker] = None):
        self.settings = settings
        self.speaker = speaker or BirdSpeaker(settings.state_dir, settings.bird,
                                              settings.birdc)
        self.last_error: Optional[str] = None
        self._refused: Set[IPAddress] = set()       # wanted, but of a family no peer has
        self._vips: FrozenSet[IPAddress] = frozenset()
        self._current = False           # the daemon runs bird_config(settings, _vips)
        self._gave_up: Optional[FrozenSet[IPAddress]] = None
        try:
            running = self.speaker.running_config()
        except BirdError as exc:
            running = None
            self.last_error = str(exc)
        if running is not None:
            # adopt: what its file announces is announced. The first sync still
            # reconfigures once (a no-op for BIRD when nothing changed: no session or route
            # moves), since a configure that failed before the old agent died may have
            # left a file the daemon does not run.
            self._vips = announced_in(running)
            log.info("adopted bird (pid %s) of %s announcing %d addresses",
                     self.speaker.pid(), self.speaker.state_dir, len(self._vips))

    def announced(self) -> FrozenSet[IPAddress]:
        return self._vips

    def announce(self, vip: IPAddress) -> Result:
        vip = ipaddress.ip_address(vip)
        if vip.version not in self.settings.families:
            return self._refuse(vip)
        return self._apply(self._vips | {vip})[0]

    def withdraw(self, vip: IPAddress) -> Result:
        vip = ipaddress.ip_address(vip)
        self._refused.discard(vip)
        return self._apply(self._vips - {vip})[0]

    def sync(self, wanted: Iterable[IPAddress]) -> Dict[IPAddress, Result]:
        """One reconfiguration for the whole change. Also restarts a daemon that died (and
        then reports every address as touched). Cheap when nothing changed: no process is
        run, the daemon's liveness is read from /proc."""
        wanted_set = {ipaddress.ip_address(a) for a in wanted}
        out: Dict[IPAddress, Result] = {}
        fresh_refusals = {a for a in wanted_set
                          if a.version not in self.settings.families} - self._refused
        for a in sorted(fresh_refusals, key=address_order):
            out[a] = self._refuse(a)
        self._refused &= wanted_set
        target = frozenset(a for a in wanted_set if a.version in self.settings.families)
        before = self._vips
        result, worked = self._apply(target)
        if not worked:      # in force already, or given up on before: nothing new to say
            touched: FrozenSet[IPAddress] = frozenset()
        elif before != target:
            touched = before ^ target
        else:               # the same set; a daemon restarted or reconfigured re-announced it
            touched = target
        for a in sorted(touched, key=address_order):
            out[a] = result
        return out

    def close(self, withdraw: bool = True, terminate: bool = False) -> None:
        """With `withdraw`, take every route back (the sessions stay up); with
        `terminate`, also stop the daemon. Neither: leave it announcing (an agent that
        restarts, and adopts it)."""
        if withdraw:
            self._gave_up = None
            self._apply(frozenset())
        if terminate:
            self.speaker.stop()
            self._current = False

    def _refuse(self, vip: IPAddress) -> Result:
        self._refused.add(vip)
        self.last_error = (f"{vip}: no IPv{vip.version} BGP peer to announce it to "
                           f"(add a peer of that family)")
        log.warning("%s", self.last_error)
        return Result.GIVE_UP

    def _apply(self, vips: FrozenSet[IPAddress]) -> Tuple[Result, bool]:
        """(result, whether the daemon was asked: reconfigured or started). A set that
        was given up on is not tried again until the set changes."""
        vips = frozenset(vips)
        if vips == self._gave_up:
            return Result.GIVE_UP, False
        try:
            running = self.speaker.running()
            if vips == self._vips and self._current and running:
                return Result.OK, False
            if not vips and not running:
                self._vips = vips          # no daemon is needed to announce nothing
                return Result.OK, False
            self.speaker.apply(bird_config(self.settings, vips))
        except BirdError as exc:
            self._current = False
            self.last_error = str(exc)
            log.warning("bgp: %s", exc)
            if not exc.retry:
                self._gave_up = vips
                return Result.GIVE_UP, True
            return Result.RETRY, True
        except OSError as exc:          # the state directory cannot be written
            self._current = False
            self.last_error = f"{self.speaker.state_dir}: {exc.strerror or exc}"
            log.warning("bgp: %s", self.last_error)
            return Result.RETRY, True
        self._vips, self._current, self.last_error, self._gave_up = vips, True, None, None
        return Result.OK, True
