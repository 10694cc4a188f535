"""BGP announcement through BIRD 2: every eligible node announces each VIP's /32 (/128)
with itself as next hop, and the router spreads flows over the nodes with ECMP.

- schema.py: the `bgp` settings' JSON Schema (pyxlb/config.py checks the file with it);
- settings.py: `BgpSettings` and `BgpPeer`, from YAML (`from_dict`) or BGPPeer objects;
- birdconf.py: the BIRD configuration, pure functions (`bird_config`,
  `upstream_router_config`);
- speaker.py: `BirdSpeaker`, which runs and reloads the daemon;
- announcer.py: `BgpAnnouncer`, the `Announcer` of mode "bgp".
"""

from .announcer import BgpAnnouncer
from .birdconf import announced_in, bird_config, upstream_router_config
from .settings import BgpError, BgpPeer, BgpSettings
from .speaker import BirdError, BirdSpeaker

__all__ = ["BgpAnnouncer", "BgpError", "BgpPeer", "BgpSettings", "BirdError", "BirdSpeaker",
           "announced_in", "bird_config", "upstream_router_config"]
