#!/usr/bin/python3
"""The libvirt-python side of the libvirt benchmark: N lifecycles (define, start, destroy,
undefine) on one connection, sequentially, timed with a monotonic clock.

    /usr/bin/python3 tests/libvirt/lifecycle-python.py URI N [POOL BACKING_VOLUME]

Without POOL, the lifecycle is the issue's: a bare domain (type `test`, one vcpu, 256 MiB, no
devices) defined, started, destroyed and undefined.

With POOL and BACKING_VOLUME, each lifecycle is what Hyperplane's driver does for an instance
on the benchmark's host: a qcow2 overlay volume backed by BACKING_VOLUME is created, the domain
XML the driver writes (metadata, the overlay as virtio disk, a user-mode NIC with a MAC, a pty
serial console, VNC) is defined, started, destroyed, the overlay deleted and the domain
undefined. The pool and the backing volume's path are looked up once, as the driver's
connection keeps them: six calls per lifecycle, the driver's six.

With `--processes K` (after the other arguments), K processes with a connection each share
the N lifecycles, started together: what a client that runs lifecycles in parallel, with no
work of its own between the calls, gets from the same libvirtd.

Prints `LIFECYCLES=N` and `SECONDS=…` on stdout. Domains are named `bench-py-<i>` and
removed again."""
import multiprocessing
import sys
import time
import uuid

import libvirt


def bare_domain(index):
    return f"""<domain type='test'>
  <name>bench-py-{index}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
</domain>"""


def driver_domain(index, pool_name, volume_name):
    """What `plugins/driver-libvirt/src/domain_xml.rs` writes for the benchmark's instances."""
    return f"""<domain type='test'>
  <name>bench-py-{index}</name>
  <uuid>{uuid.uuid4()}</uuid>
  <metadata>
    <hp:instance xmlns:hp='urn:hyperplane:libvirt:instance:1'>
      <hp:name>bench-py-{index}</hp:name>
      <hp:template name='bench' version='0'/>
    </hp:instance>
  </metadata>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='{pool_name}' volume='{volume_name}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'>
      <mac address='52:54:00:00:{index // 256 % 256:02x}:{index % 256:02x}'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'>
      <target port='0'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>
  </devices>
</domain>
"""


def run_lifecycles(uri, indexes, pool_name, backing_name, ready=None, finished=None):
    """The lifecycles of `indexes` on a connection of their own; with `ready` (a barrier), once
    every process is ready, putting the times they started and ended (`None` on a failure) on
    `finished`. Answers the seconds."""
    try:
        return lifecycles_on_own_connection(uri, indexes, pool_name, backing_name, ready, finished)
    except BaseException:
        if finished is not None:
            finished.put(None)
        raise


def lifecycles_on_own_connection(uri, indexes, pool_name, backing_name, ready, finished):
    connection = libvirt.open(uri)
    if pool_name:
        pool = connection.storagePoolLookupByName(pool_name)
        backing_path = pool.storageVolLookupByName(backing_name).path()
    if ready is not None:
        ready.wait(timeout=60)
    started = time.monotonic()
    for index in indexes:
        volume = None
        if pool_name:
            volume_name = f"bench-py-{index}.qcow2"
            volume = pool.createXML(
                f"""<volume><name>{volume_name}</name><capacity unit='G'>1</capacity>
  <target><format type='qcow2'/></target>
  <backingStore><path>{backing_path}</path><format type='raw'/></backingStore></volume>""",
                0,
            )
            domain = connection.defineXML(driver_domain(index, pool_name, volume_name))
        else:
            domain = connection.defineXML(bare_domain(index))
        domain.create()
        domain.destroy()
        if volume is not None:
            volume.delete(0)
        domain.undefine()
    ended = time.monotonic()
    connection.close()
    if finished is not None:
        finished.put((started, ended))
    return ended - started


def main():
    arguments = sys.argv[1:]
    processes = 1
    if "--processes" in arguments:
        at = arguments.index("--processes")
        processes = int(arguments[at + 1])
        del arguments[at : at + 2]
    uri, count = arguments[0], int(arguments[1])
    pool_name, backing_name = (arguments[2], arguments[3]) if len(arguments) > 3 else (None, None)
    if processes == 1:
        elapsed = run_lifecycles(uri, range(count), pool_name, backing_name)
    else:
        ready = multiprocessing.Barrier(processes + 1)
        finished = multiprocessing.Queue()
        workers = [
            multiprocessing.Process(
                target=run_lifecycles,
                args=(uri, range(first, count, processes), pool_name, backing_name, ready, finished),
            )
            for first in range(processes)
        ]
        for worker in workers:
            worker.start()
        ready.wait(timeout=60)
        # From the first process's start to the last one's end (this process may be scheduled
        # after the others started).
        spans = [finished.get() for _ in workers]
        for worker in workers:
            worker.join()
        if None in spans:
            sys.exit("a lifecycle process failed")
        elapsed = max(ended for _, ended in spans) - min(started for started, _ in spans)
    print(f"LIFECYCLES={count}")
    print(f"SECONDS={elapsed:.6f}")


if __name__ == "__main__":
    main()
