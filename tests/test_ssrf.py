"""Class 4 of issue 11: the SSRF guard allows only globally routable addresses, deciding on every IPv4
address an IPv6 address embeds (IPv4-mapped, IPv4-compatible, 6to4, Teredo, NAT64)."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mmrank import ImageLoadError, ImagePolicy
from mmrank.inputs.images import check_url_host, is_public_address

# Ranges no server may fetch on behalf of others (IPv4). 100.64.0.0/10 holds cloud metadata endpoints
# (100.100.100.200); the others are loopback, private, link-local (169.254.169.254), "this network",
# documentation, benchmarking, IETF, reserved, broadcast, multicast.
BLOCKED_V4 = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
              "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
              "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32"]
BLOCKED_V6 = ["::1/128", "::/128", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8", "2001:db8::/32",
              "100::/64"]
# Public samples: big providers' ranges (globally routable).
PUBLIC_V4 = ["8.8.8.0/24", "1.1.1.0/24", "93.184.216.0/24", "151.101.0.0/16", "34.0.0.0/10"]
PUBLIC_V6 = ["2606:4700::/32", "2a00:1450::/32", "2001:4860::/32"]


def _in(cidr: str) -> st.SearchStrategy:
    net = ipaddress.ip_network(cidr)
    return st.integers(0, net.num_addresses - 1).map(lambda k: net.network_address + k)


blocked_v4 = st.sampled_from(BLOCKED_V4).flatmap(_in)
public_v4 = st.sampled_from(PUBLIC_V4).flatmap(_in)


def embeddings(v4: ipaddress.IPv4Address, rnd: int) -> list[ipaddress.IPv6Address]:
    """Every IPv6 form that carries ``v4`` to a network that would deliver it."""
    n = int(v4)
    low16 = rnd & 0xFFFF
    teredo_server = ipaddress.IPv4Address("65.54.227.120")
    return [
        ipaddress.IPv6Address(0xFFFF << 32 | n),                                   # ::ffff:a.b.c.d
        ipaddress.IPv6Address(n) if n > 0xFFFF else ipaddress.IPv6Address(0xFFFF << 32 | n),  # ::a.b.c.d
        ipaddress.IPv6Address(0x2002 << 112 | n << 80 | (rnd & ((1 << 80) - 1))),  # 6to4 2002:AABB:CCDD::/48
        ipaddress.IPv6Address(0x20010000 << 96 | int(teredo_server) << 64 | low16 << 32 | (n ^ 0xFFFFFFFF)),  # Teredo
        ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | n),       # NAT64 well-known
        ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b:1::")) | (rnd & 0xFFFF) << 32 | n),  # local NAT64
    ]


@settings(max_examples=200, derandomize=True, database=None)
@given(blocked_v4, st.integers(0, 2**80 - 1))
def test_blocked_ipv4_and_every_embedding_of_it_are_refused(v4, rnd):
    assert not is_public_address(str(v4))
    for v6 in embeddings(v4, rnd):
        assert not is_public_address(str(v6)), f"{v6} embeds {v4}"


@settings(max_examples=200, derandomize=True, database=None)
@given(st.sampled_from(BLOCKED_V6).flatmap(_in), st.sampled_from(["", "%eth0", "%1"]))
def test_blocked_ipv6_ranges_are_refused(v6, zone):
    assert not is_public_address(str(v6) + zone)


@settings(max_examples=200, derandomize=True, database=None)
@given(st.one_of(public_v4, st.sampled_from(PUBLIC_V6).flatmap(_in)))
def test_public_addresses_pass(ip):
    assert is_public_address(str(ip))


@settings(max_examples=100, derandomize=True, database=None)
@given(public_v4, st.integers(0, 2**80 - 1))
def test_public_ipv4_embedded_in_nat64_and_6to4_passes(v4, rnd):
    # NAT64 and 6to4 of a public address are routable; the guard must not over-block them.
    forms = embeddings(v4, rnd)
    assert is_public_address(str(forms[2])) and is_public_address(str(forms[4]))


def test_the_issue_examples():
    for addr in ["100.100.100.200", "::ffff:100.100.100.200", "2002:7f00:1::1", "2002:a9fe:a9fe::",
                 "64:ff9b::127.0.0.1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::10.0.0.1", "fec0::1",
                 "2001:0:4136:e378:8000:63bf:80ff:fffe", "::127.0.0.1", "not an address", ""]:
        assert not is_public_address(addr), addr


@settings(max_examples=60, derandomize=True, database=None)
@given(st.one_of(blocked_v4.map(str), blocked_v4.map(lambda a: str(ipaddress.IPv6Address(0xFFFF << 32 | int(a))))))
def test_strict_policy_refuses_urls_naming_them(addr):
    host = f"[{addr}]" if ":" in addr else addr
    try:
        socket.getaddrinfo(addr, None, proto=socket.IPPROTO_TCP)
    except OSError:
        pytest.skip("this machine cannot resolve IPv6 literals")
    with pytest.raises(ImageLoadError, match="non-public address"):
        check_url_host(f"http://{host}:8080/img.png", ImagePolicy.strict())
