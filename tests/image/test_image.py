"""The image itself: it runs `pyxlb` as its entry point, and the CA bundle the build hands
pip as a secret (scripts/build-image.sh, CA_BUNDLE) is in none of its layers."""

import os
import tarfile

from tests.support.daemonset import podman

CA = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"


def test_the_entry_point_is_pyxlb(image):
    out = podman(["run", "--rm", "--pull=never", "--network=none", "--read-only",
                  "--read-only-tmpfs=false", image, "--version"]).stdout
    assert out.startswith("pyxlb, version ")


def test_the_build_secret_is_in_no_layer(image, tmp_path):
    with open(CA, "rb") as f:
        bundle = f.read()
    # the last certificate's body (update-ca-certificates puts a site's own CA, such as a
    # proxy's, after Debian's): long enough that no other file holds it by chance
    start = bundle.rindex(b"-----BEGIN CERTIFICATE-----")
    needle = bundle[start:start + 400]
    archive = tmp_path / "image.tar"
    podman(["save", "--format=docker-archive", "--output", str(archive), image])
    found = []
    with tarfile.open(archive) as outer:
        layers = [m for m in outer.getmembers() if m.name.endswith(".tar")]
        assert layers, "no layers in the saved image"
        for member in layers:
            with tarfile.open(fileobj=outer.extractfile(member)) as layer:
                for f in layer.getmembers():
                    if f.isfile() and f.size >= len(needle):
                        if needle in layer.extractfile(f).read():
                            found.append(f"{member.name}:{f.name}")
    assert found == [], f"the CA bundle is in the image: {found}"
