"""pyxlb._bpf against the real kernel: the selftest object, its maps and its program."""

import errno
import os
import struct
import subprocess
import threading

import pytest

from pyxlb import _bpf, netns
from pyxlb.bpf import object_path

SELFTEST = object_path("selftest")
ETH_FRAME = bytes.fromhex("020000000002" "020000000001" "0800") + bytes(range(46))


def vip_key(i: int, port: int = 80) -> bytes:
    """An xlb_vip_key: 16-byte address, port (network order), proto, family."""
    return struct.pack("!16sHBB", bytes([10, 0, 0, i]) + bytes(12), port, 6, 4)


def u32(v: int) -> bytes:
    return struct.pack("=I", v)


def u64(v: int) -> bytes:
    return struct.pack("=Q", v)


@pytest.fixture
def loaded(bpffs_dir):
    """The selftest object loaded, with its pinned-by-name map under a private directory."""
    obj = _bpf.BpfObject.open(SELFTEST, pin_root_path=bpffs_dir)
    obj.load()
    yield obj
    obj.close()


# -- object -------------------------------------------------------------------------------


def test_object_lists_maps_and_programs():
    with _bpf.BpfObject.open(SELFTEST) as obj:
        assert {"xlb_test_hash", "xlb_test_array", "xlb_test_counters", "xlb_test_rings",
                "xlb_test_pinned"} <= set(obj.map_names())
        assert obj.program_names() == ["xlb_selftest"]


def test_struct_sizes_agree_with_the_bpf_object(loaded):
    """structs.h compiled by the host compiler (Cython) and by clang -target bpf agree."""
    sizes = _bpf.struct_sizes()
    assert loaded.map("xlb_test_hash").key_size == sizes["xlb_vip_key"] == 20
    assert loaded.map("xlb_test_counters").value_size == sizes["xlb_counters"] == 24


def test_map_shapes_and_the_maps_a_program_uses(loaded):
    """map_shape: what the object declares, which is what the kernel made; map_ids: the
    maps the verifier saw the program use (not the two it declares and never touches)."""
    names = ("xlb_test_hash", "xlb_test_array", "xlb_test_counters", "xlb_test_rings",
             "xlb_test_pinned")
    for name in names:
        m = loaded.map(name)
        assert loaded.map_shape(name) == (m.type, m.key_size, m.value_size)
    assert loaded.map_shape("xlb_test_counters")[2] == _bpf.struct_sizes()["xlb_counters"]
    ids = loaded.program("xlb_selftest").map_ids()
    assert len(ids) == len(set(ids))
    assert {n for n in names if loaded.map(n).id in ids} == \
        {"xlb_test_array", "xlb_test_counters", "xlb_test_rings"}


def test_constants_come_from_consts_h():
    assert _bpf.CONSTANTS["XLB_RING_SIZE_DEFAULT"] == 65537
    assert _bpf.CONSTANTS["XLB_FAMILY_V4"] == 4 and _bpf.CONSTANTS["XLB_FAMILY_V6"] == 6


def test_set_max_entries_before_load(bpffs_dir):
    with _bpf.BpfObject.open(SELFTEST, pin_root_path=bpffs_dir) as obj:
        obj.set_max_entries("xlb_test_hash", 1000)
        assert obj.max_entries("xlb_test_hash") == 1000
        obj.load()
        assert obj.map("xlb_test_hash").max_entries == 1000
        with pytest.raises(ValueError, match="already loaded"):
            obj.set_max_entries("xlb_test_hash", 10)


def test_object_errors():
    with pytest.raises(FileNotFoundError):
        _bpf.BpfObject.open("/nonexistent/prog.o")
    with pytest.raises(TypeError):
        _bpf.BpfObject()
    with _bpf.BpfObject.open(SELFTEST) as obj:
        with pytest.raises(KeyError):
            obj.set_max_entries("no_such_map", 4)
        with pytest.raises(ValueError, match="load"):
            obj.map("xlb_test_hash")
        with pytest.raises(ValueError):
            obj.set_max_entries("xlb_test_hash", 0)


def test_maps_outlive_their_object(loaded):
    m = loaded.map("xlb_test_array")
    loaded.close()
    m[5] = u32(55)
    assert m[5] == u32(55)
    with pytest.raises(ValueError, match="closed"):
        loaded.map("xlb_test_array")


# -- elements -----------------------------------------------------------------------------


def test_lookup_update_delete(loaded):
    m = loaded.map("xlb_test_hash")
    m.update(vip_key(1), u64(7))
    assert m.lookup(vip_key(1)) == u64(7)
    assert vip_key(1) in m and vip_key(2) not in m
    assert m.get(vip_key(2)) is None
    m.delete(vip_key(1))
    with pytest.raises(KeyError):
        m.lookup(vip_key(1))
    with pytest.raises(KeyError):
        m.delete(vip_key(1))


def test_update_flags(loaded):
    m = loaded.map("xlb_test_hash")
    m.update(vip_key(1), u64(1), _bpf.NOEXIST)
    with pytest.raises(FileExistsError):
        m.update(vip_key(1), u64(2), _bpf.NOEXIST)
    m.update(vip_key(1), u64(3), _bpf.EXIST)
    assert m[vip_key(1)] == u64(3)
    with pytest.raises(FileNotFoundError):
        m.update(vip_key(9), u64(3), _bpf.EXIST)
    with pytest.raises(ValueError):
        m.update(vip_key(1), u64(3), 99)


def test_wrong_sizes_raise_before_any_syscall(loaded):
    m = loaded.map("xlb_test_hash")
    m.update(vip_key(1), u64(1))
    with pytest.raises(ValueError, match="key is 19 bytes, expected 20"):
        m.update(vip_key(1)[:-1], u64(2))
    with pytest.raises(ValueError, match="value is 4 bytes, expected 8"):
        m.update(vip_key(1), u32(2))
    with pytest.raises(ValueError):
        m.lookup(b"short")
    with pytest.raises(ValueError, match="int key"):
        m.lookup(3)
    assert m[vip_key(1)] == u64(1)


def test_iterate_keys_and_items(loaded):
    m = loaded.map("xlb_test_hash")
    keys = {vip_key(i) for i in range(20)}
    for i, k in enumerate(sorted(keys)):
        m[k] = u64(i)
    assert set(m.keys()) == keys
    assert m.count() == 20
    assert {k: v for k, v in m.items()} == {k: u64(i) for i, k in enumerate(sorted(keys))}


def test_map_full_is_an_oserror(loaded):
    m = loaded.map("xlb_test_hash")  # 64 entries
    for i in range(64):
        m[vip_key(i)] = u64(i)
    with pytest.raises(OSError) as exc:
        m[vip_key(200)] = u64(1)
    assert exc.value.errno == errno.E2BIG


# -- batches ------------------------------------------------------------------------------


def test_batch_update_and_lookup(loaded):
    m = loaded.map("xlb_test_hash")
    keys = b"".join(vip_key(i) for i in range(50))
    values = b"".join(u64(i * 3) for i in range(50))
    assert m.update_batch(keys, values) == 50
    got_keys, got_values, count = m.lookup_batch(chunk=7)
    assert count == 50
    got = {got_keys[i * 20:(i + 1) * 20]: got_values[i * 8:(i + 1) * 8] for i in range(count)}
    assert got == {vip_key(i): u64(i * 3) for i in range(50)}


def test_batch_size_errors(loaded):
    m = loaded.map("xlb_test_hash")
    with pytest.raises(ValueError, match="multiple"):
        m.update_batch(b"x" * 21, u64(1))
    with pytest.raises(ValueError, match="expected 2"):
        m.update_batch(vip_key(1) + vip_key(2), u64(1))
    assert m.count() == 0


def test_write_array_one_call(loaded):
    a = loaded.map("xlb_test_array")
    a.write_array(struct.pack("=16I", *range(100, 116)))
    assert [struct.unpack("=I", a[i])[0] for i in range(16)] == list(range(100, 116))
    a.write_array(struct.pack("=2I", 7, 8), start=14)
    assert a[14] == u32(7) and a[15] == u32(8)
    keys, values, count = a.lookup_batch()
    assert count == 16 and struct.unpack("=16I", values)[14:] == (7, 8)
    with pytest.raises(ValueError, match="exceed"):
        a.write_array(struct.pack("=3I", 1, 2, 3), start=14)
    with pytest.raises(TypeError):
        loaded.map("xlb_test_hash").write_array(u64(1))


# -- per-CPU ------------------------------------------------------------------------------


def test_percpu_read_all_and_sum(loaded):
    c = loaded.map("xlb_test_counters")
    ncpus = _bpf.num_possible_cpus()
    assert c.percpu and c.ncpus == ncpus >= 1
    # one value is written to every CPU
    c.update(1, struct.pack("=3Q", 1, 10, 100))
    assert c.lookup_percpu(1) == [struct.pack("=3Q", 1, 10, 100)] * ncpus
    assert c.lookup_percpu_sum(1) == (ncpus, 10 * ncpus, 100 * ncpus)
    # or each CPU its own
    per = b"".join(struct.pack("=3Q", cpu, 2 * cpu, 3) for cpu in range(ncpus))
    c.update(2, per)
    total = sum(range(ncpus))
    assert c.lookup_percpu_sum(2) == (total, 2 * total, 3 * ncpus)
    with pytest.raises(ValueError):
        c.update(2, b"\0" * 25)
    with pytest.raises(TypeError):
        loaded.map("xlb_test_array").lookup_percpu(0)


def test_percpu_batch(loaded):
    c = loaded.map("xlb_test_counters")
    ncpus = c.ncpus
    one = lambda v: struct.pack("=3Q", v, v, v) * ncpus  # noqa: E731
    c.write_array(one(1) + one(2), start=2)
    assert c.lookup_percpu_sum(3) == (2 * ncpus,) * 3
    _, values, count = c.lookup_batch()
    assert count == 4 and len(values) == 4 * 24 * ncpus


# -- map-of-maps --------------------------------------------------------------------------


def test_map_of_maps_swap_is_seen_by_the_program(loaded):
    outer = loaded.map("xlb_test_rings")
    prog = loaded.program("xlb_selftest")
    array = loaded.map("xlb_test_array")
    array[0] = u32(_bpf.XDP_PASS)
    with pytest.raises(KeyError):
        outer.inner_id(0)
    ring_a = _bpf.Map.create(_bpf.MAP_TYPE_ARRAY, 4, 4, 7, "ring_a")
    ring_a.write_array(struct.pack("=7I", *[11] * 7))
    outer.set_inner(0, ring_a)
    assert outer.inner_id(0) == ring_a.id
    prog.test_run(ETH_FRAME)
    assert array[1] == u32(11)

    ring_b = _bpf.Map.create(_bpf.MAP_TYPE_ARRAY, 4, 4, 7, "ring_b")
    ring_b.write_array(struct.pack("=7I", *[22] * 7))
    outer.set_inner(0, ring_b)
    assert outer.inner_id(0) == ring_b.id
    assert outer.inner_map(0).id == ring_b.id
    prog.test_run(ETH_FRAME)
    assert array[1] == u32(22)


def test_map_of_maps_rejects_mismatched_inner(loaded):
    outer = loaded.map("xlb_test_rings")
    wrong = _bpf.Map.create(_bpf.MAP_TYPE_HASH, 4, 4, 7, "wrong")
    with pytest.raises(OSError) as exc:
        outer.set_inner(0, wrong)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        outer.update(0, u32(1))
    with pytest.raises(TypeError):
        loaded.map("xlb_test_array").set_inner(0, wrong)


# -- pinning ------------------------------------------------------------------------------


def test_pin_by_name_is_adopted_by_a_second_load(bpffs_dir):
    with _bpf.BpfObject.open(SELFTEST, pin_root_path=bpffs_dir) as first:
        first.load()
        m1 = first.map("xlb_test_pinned")
        m1[3] = u64(33)
        unpinned_id = first.map("xlb_test_hash").id
    assert os.path.exists(os.path.join(bpffs_dir, "xlb_test_pinned"))
    with _bpf.BpfObject.open(SELFTEST, pin_root_path=bpffs_dir) as second:
        second.load()
        m2 = second.map("xlb_test_pinned")
        assert m2.id == m1.id and m2[3] == u64(33)
        # maps that are not pinned are new in each load
        assert second.map("xlb_test_hash").id != unpinned_id


def test_set_pin_path_pins_then_adopts(bpffs_dir):
    path = os.path.join(bpffs_dir, "hash")
    with _bpf.BpfObject.open(SELFTEST, pin_root_path=bpffs_dir) as first:
        first.set_pin_path("xlb_test_hash", path)
        assert first.pin_path("xlb_test_hash") == path
        first.load()
        first.map("xlb_test_hash")[vip_key(1)] = u64(5)
        first_id = first.map("xlb_test_hash").id
    with _bpf.BpfObject.open(SELFTEST, pin_root_path=bpffs_dir) as second:
        second.set_pin_path("xlb_test_hash", path)
        second.load()
        assert second.map("xlb_test_hash").id == first_id
        assert second.map("xlb_test_hash")[vip_key(1)] == u64(5)


def test_incompatible_pinned_map_fails_load(bpffs_dir):
    path = os.path.join(bpffs_dir, "hash")
    _bpf.Map.create(_bpf.MAP_TYPE_HASH, 4, 8, 64, "other").pin(path)
    with _bpf.BpfObject.open(SELFTEST, pin_root_path=bpffs_dir) as obj:
        obj.set_pin_path("xlb_test_hash", path)
        with pytest.raises(OSError) as exc:
            obj.load()
        assert exc.value.errno == errno.EINVAL


def test_reuse_map_before_load(bpffs_dir):
    shared = _bpf.Map.create(_bpf.MAP_TYPE_ARRAY, 4, 4, 16, "shared")
    with _bpf.BpfObject.open(SELFTEST, pin_root_path=bpffs_dir) as obj:
        obj.reuse_map("xlb_test_array", shared)
        obj.load()
        assert obj.map("xlb_test_array").id == shared.id


def test_pin_open_unpin(loaded, bpffs_dir):
    m = loaded.map("xlb_test_array")
    path = os.path.join(bpffs_dir, "array")
    m.pin(path)
    with pytest.raises(FileExistsError):
        m.pin(path)
    again = _bpf.Map.from_pinned(path)
    assert again.id == m.id and again.key_size == 4 and again.max_entries == 16
    assert _bpf.Map.from_id(m.id).id == m.id
    _bpf.Map.unpin(path)
    with pytest.raises(FileNotFoundError):
        _bpf.Map.from_pinned(path)
    prog = loaded.program("xlb_selftest")
    prog.pin(os.path.join(bpffs_dir, "prog"))
    assert _bpf.Program.from_pinned(os.path.join(bpffs_dir, "prog")).id == prog.id
    assert _bpf.Program.from_id(prog.id).id == prog.id


def test_permission_error_for_an_unprivileged_user(loaded, bpffs_dir):
    """A negative errno of EPERM/EACCES becomes PermissionError (checked in a forked child
    that gave up root, since root bypasses the checks)."""
    path = os.path.join(bpffs_dir, "array")
    loaded.map("xlb_test_array").pin(path)
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery, just an exit code
        code = 4
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            _bpf.Map.from_pinned(path)
        except PermissionError:
            code = 0
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_other_errno_is_plain_oserror():
    with pytest.raises(OSError) as exc:
        _bpf.Map.create(9999, 4, 4, 4, "bad")
    assert type(exc.value) is OSError and exc.value.errno == errno.EINVAL
    with pytest.raises(ValueError):
        _bpf.Map.create(_bpf.MAP_TYPE_ARRAY, 4, 4, 0, "empty")


# -- closed objects -----------------------------------------------------------------------


def test_closed_handles_raise_not_crash(loaded):
    m = loaded.map("xlb_test_array")
    p = loaded.program("xlb_selftest")
    m.close()
    p.close()
    m.close()  # twice is fine
    assert m.closed and p.closed
    for call in (lambda: m.lookup(0), lambda: m.update(0, u32(1)), lambda: m.delete(0),
                 lambda: list(m.keys()), lambda: m.lookup_batch(), lambda: m.fd,
                 lambda: m.update_batch(u32(0), u32(0)), lambda: m.pin("/sys/fs/bpf/x"),
                 lambda: p.test_run(ETH_FRAME), lambda: p.fd):
        with pytest.raises(ValueError, match="closed"):
            call()
    loaded.close()
    with pytest.raises(ValueError, match="closed"):
        loaded.map_names()


# -- programs -----------------------------------------------------------------------------


@pytest.mark.parametrize("action", [_bpf.XDP_PASS, _bpf.XDP_DROP, _bpf.XDP_TX, _bpf.XDP_ABORTED])
def test_test_run_returns_action_and_output(loaded, action):
    loaded.map("xlb_test_array")[0] = u32(action)
    ret, out, duration = loaded.program("xlb_selftest").test_run(ETH_FRAME)
    assert ret == action
    if action == _bpf.XDP_TX:
        assert out == ETH_FRAME[6:12] + ETH_FRAME[0:6] + ETH_FRAME[12:]
    else:
        assert out == ETH_FRAME
    assert duration >= 0


def test_test_run_repeat_counts_every_run(loaded):
    loaded.map("xlb_test_array")[0] = u32(_bpf.XDP_PASS)
    prog = loaded.program("xlb_selftest")
    ret, out, duration = prog.test_run(ETH_FRAME, repeat=1000)
    assert ret == _bpf.XDP_PASS and duration > 0
    assert loaded.map("xlb_test_counters").lookup_percpu_sum(0)[:2] == (1000, 1000 * len(ETH_FRAME))
    with pytest.raises(ValueError):
        prog.test_run(ETH_FRAME, repeat=0)
    with pytest.raises(ValueError):
        prog.test_run(b"")


def test_run_stats_count_runs_while_enabled(loaded):
    """enable_run_stats(): the kernel counts a program's runs and their time while the
    descriptor is open. (Whether it stops when closed depends on every other process:
    the switch is the kernel's, counted over all who turned it on.)"""
    loaded.map("xlb_test_array")[0] = u32(_bpf.XDP_PASS)
    prog = loaded.program("xlb_selftest")
    before = prog.run_stats()
    fd = _bpf.enable_run_stats()
    try:
        prog.test_run(ETH_FRAME, repeat=500)
        during = prog.run_stats()
    finally:
        os.close(fd)
    assert during[1] - before[1] == 500
    assert during[0] > before[0]


def test_test_run_with_ctx(loaded):
    loaded.map("xlb_test_array")[0] = u32(_bpf.XDP_DROP)
    ctx = struct.pack("=6I", 0, len(ETH_FRAME), 0, 0, 0, 0)  # struct xdp_md: data, data_end, ...
    assert loaded.program("xlb_selftest").test_run(ETH_FRAME, ctx=ctx)[0] == _bpf.XDP_DROP


# -- XDP attach ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_xdp_attach_replace_detach(netns, bpffs_dir, mode):
    objs = [_bpf.BpfObject.open(SELFTEST, pin_root_path=bpffs_dir) for _ in range(2)]
    for o in objs:
        o.load()
    first, second = (o.program("xlb_selftest") for o in objs)
    with netns_enter(netns):
        assert _bpf.XdpLink.query("veth0")["mode"] is None
        link = _bpf.XdpLink.attach("veth0", first, mode=mode)
        info = _bpf.XdpLink.query("veth0")
        assert info["mode"] == mode and info["prog_id"] == first.id
        assert ip_link_shows("veth0", "xdp" if mode == "native" else "xdpgeneric")
        # a second attach does not clobber it
        with pytest.raises(OSError) as exc:
            _bpf.XdpLink.attach("veth0", second, mode=mode)
        assert exc.value.errno in (errno.EBUSY, errno.EEXIST)
        stale = _bpf.XdpLink.current("veth0", mode)
        link.replace(second)
        assert _bpf.XdpLink.query("veth0")["prog_id"] == second.id == link.prog_id
        # a link that still believes in the old program cannot replace blindly
        with pytest.raises(OSError):
            stale.replace(first)
        assert _bpf.XdpLink.query("veth0")["prog_id"] == second.id
        link.detach()
        assert _bpf.XdpLink.query("veth0")["mode"] is None
        with pytest.raises(FileNotFoundError):
            _bpf.XdpLink.current("veth0", mode)
    for o in objs:
        o.close()


def test_xdp_errors(netns, loaded):
    prog = loaded.program("xlb_selftest")
    with netns_enter(netns):
        with pytest.raises(OSError) as exc:
            _bpf.XdpLink.attach("nosuchdev0", prog)
        assert exc.value.errno == errno.ENODEV
        with pytest.raises(ValueError, match="mode"):
            _bpf.XdpLink.attach("veth0", prog, mode="turbo")
        assert _bpf.XdpLink.query("veth0")["mode"] is None


def test_attach_is_per_namespace(netns, loaded):
    """The program attached inside the namespace is not visible from outside."""
    prog = loaded.program("xlb_selftest")
    with netns_enter(netns):
        link = _bpf.XdpLink.attach("veth1", prog, mode="native")
    out = subprocess.run(["ip", "-n", netns, "link", "show", "veth1"], capture_output=True,
                         text=True, check=True).stdout
    assert f"prog/xdp id {prog.id}" in out
    with netns_enter(netns):
        link.detach()


def netns_enter(name):
    return netns.enter(name)


def ip_link_shows(dev, word):
    out = subprocess.run(["ip", "link", "show", dev], capture_output=True, text=True,
                         check=True).stdout
    return f" {word} " in out or f" {word}/" in out


def test_threads_share_a_map(loaded):
    """Calls release nothing unsafe: concurrent writers from threads all land."""
    m = loaded.map("xlb_test_hash")

    def writer(base):
        for i in range(16):
            m[vip_key(base + i)] = u64(base + i)

    threads = [threading.Thread(target=writer, args=(b,)) for b in (0, 16, 32, 48)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.count() == 64
