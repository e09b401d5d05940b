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

Prints `LIFECYCLES=N` and `SECONDS=…` on stdout. Domains are named `bench-py-<i>` and
removed again."""
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
elapsed = time.monotonic() - started
connection.close()
print(f"LIFECYCLES={count}")
print(f"SECONDS={elapsed:.6f}")
