#!/usr/bin/python3
"""The libvirt-python side of the libvirt benchmark: N lifecycles (define, start, destroy,
undefine) on one connection, sequentially, timed with a monotonic clock.

    /usr/bin/python3 tests/libvirt/lifecycle-python.py URI N [POOL BACKING_VOLUME]

With POOL and BACKING_VOLUME, each lifecycle also does what Hyperplane's driver does for an
instance's disk: a qcow2 overlay volume backed by BACKING_VOLUME is created before the define
and deleted after the undefine. The pool and the backing volume's path are looked up once, as
the driver's connection keeps them: six calls per lifecycle, the driver's six.

Prints `LIFECYCLES=N` and `SECONDS=…` on stdout. Domains are named `bench-py-<i>` and
removed again; the domain XML is what Hyperplane's driver defines for the test driver, less
the devices (type `test`, one vcpu, 256 MiB)."""
import sys
import time

import libvirt

uri, count = sys.argv[1], int(sys.argv[2])
pool_name, backing_name = (sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else (None, None)
connection = libvirt.open(uri)
if pool_name:
    pool = connection.storagePoolLookupByName(pool_name)
    backing_path = pool.storageVolLookupByName(backing_name).path()
started = time.monotonic()
for index in range(count):
    volume = None
    if pool_name:
        volume = pool.createXML(
            f"""<volume><name>bench-py-{index}.qcow2</name><capacity unit='G'>1</capacity>
  <target><format type='qcow2'/></target>
  <backingStore><path>{backing_path}</path><format type='raw'/></backingStore></volume>""",
            0,
        )
    xml = f"""<domain type='test'>
  <name>bench-py-{index}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
</domain>"""
    domain = connection.defineXML(xml)
    domain.create()
    domain.destroy()
    domain.undefine()
    if volume is not None:
        volume.delete(0)
elapsed = time.monotonic() - started
connection.close()
print(f"LIFECYCLES={count}")
print(f"SECONDS={elapsed:.6f}")
