"""A tiny eBPF assembler and a bpf(2) loader (ctypes, no compiler, no libbpf).

Just what the steering classifier needs: 64-bit moves, adds and ands, loads and stores
on the stack, a context load, compare-and-jump to labels, helper calls and exit.
`Asm` collects instructions, `Asm.assemble()` resolves labels and returns the
bytecode, `load_sched_cls()` hands it to the kernel and returns the program fd.
"""
from __future__ import annotations

import ctypes
import os
import struct

# instruction classes and fields (linux/bpf_common.h, linux/bpf.h)
_LDX, _ST, _STX, _JMP, _ALU64 = 0x01, 0x02, 0x03, 0x05, 0x07
_MEM, _IMM_DW = 0x60, 0x18
_K, _X = 0x00, 0x08
_SIZE = {1: 0x10, 2: 0x08, 4: 0x00, 8: 0x18}
_MOV, _ADD, _AND = 0xB0, 0x00, 0x50
_JSET, _JNE, _CALL, _EXIT = 0x40, 0x50, 0x80, 0x90
_INSN = struct.Struct("<BBhi")

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)

# helpers (enum bpf_func_id) and tc verdicts (linux/pkt_cls.h)
SKB_STORE_BYTES, CLONE_REDIRECT, REDIRECT, SKB_LOAD_BYTES = 9, 13, 23, 26
TC_ACT_UNSPEC, TC_ACT_SHOT = -1, 2

BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SCHED_CLS = 3
_NR_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "riscv64": 280}


class BPFError(OSError):
    """The kernel refused the program; `log` holds the verifier's words."""

    errno: int          # always set: every BPFError is made with the errno the kernel gave

    def __init__(self, err: int, msg: str, log: str = "") -> None:
        super().__init__(err, msg)
        self.log = log


class Asm:
    def __init__(self) -> None:
        self.insns: list = []          # (code, dst, src, off | label, imm)
        self.labels: dict[str, int] = {}

    def _emit(self, code, dst=0, src=0, off=0, imm=0):
        self.insns.append((code, dst, src, off, imm))
        return self

    def label(self, name: str):
        if name in self.labels:
            raise ValueError(f"label {name} defined twice")
        self.labels[name] = len(self.insns)
        return self

    def mov(self, dst: int, src: int):
        return self._emit(_ALU64 | _MOV | _X, dst, src)

    def mov_imm(self, dst: int, imm: int):
        return self._emit(_ALU64 | _MOV | _K, dst, 0, 0, _s32(imm))

    def add_imm(self, dst: int, imm: int):
        return self._emit(_ALU64 | _ADD | _K, dst, 0, 0, _s32(imm))

    def and_imm(self, dst: int, imm: int):
        return self._emit(_ALU64 | _AND | _K, dst, 0, 0, _s32(imm))

    def ld_imm64(self, dst: int, value: int):
        value &= (1 << 64) - 1
        self._emit(_IMM_DW, dst, 0, 0, _s32(value & 0xFFFFFFFF, wrap=True))
        return self._emit(0, 0, 0, 0, _s32(value >> 32, wrap=True))

    def ldx(self, size: int, dst: int, src: int, off: int):
        return self._emit(_LDX | _MEM | _SIZE[size], dst, src, off)

    def stx(self, size: int, dst: int, off: int, src: int):
        return self._emit(_STX | _MEM | _SIZE[size], dst, src, off)

    def st_imm(self, size: int, dst: int, off: int, imm: int):
        return self._emit(_ST | _MEM | _SIZE[size], dst, 0, off, _s32(imm))

    def jne_imm(self, dst: int, imm: int, label: str):
        return self._emit(_JMP | _JNE | _K, dst, 0, label, _s32(imm))

    def jset_imm(self, dst: int, imm: int, label: str):
        return self._emit(_JMP | _JSET | _K, dst, 0, label, _s32(imm))

    def jne(self, dst: int, src: int, label: str):
        return self._emit(_JMP | _JNE | _X, dst, src, label)

    def call(self, helper: int):
        return self._emit(_JMP | _CALL, 0, 0, 0, helper)

    def exit(self):
        return self._emit(_JMP | _EXIT)

    def assemble(self) -> bytes:
        out = bytearray()
        for pc, (code, dst, src, off, imm) in enumerate(self.insns):
            if isinstance(off, str):
                if off not in self.labels:
                    raise ValueError(f"undefined label {off}")
                off = self.labels[off] - pc - 1
            out += _INSN.pack(code, (src << 4) | dst, off, imm)
        return bytes(out)


def _s32(v: int, wrap: bool = False) -> int:
    if wrap:
        v &= 0xFFFFFFFF
        return v - (1 << 32) if v & 0x80000000 else v
    if not -(1 << 31) <= v < (1 << 31):
        raise ValueError(f"immediate {v} does not fit in 32 bits")
    return v


# union bpf_attr, BPF_PROG_LOAD part: prog_type, insn_cnt, insns, license, log_level,
# log_size, log_buf, kern_version, prog_flags, prog_name[16]; zero-padded.
_PROG_LOAD = struct.Struct("<IIQQIIQII16s")
_ATTR_SIZE = 128
_libc = None


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    machine = os.uname().machine        # platform.machine(), without its ~1.5 ms import
    nr = _NR_BPF.get(machine)
    if nr is None:
        raise BPFError(38, f"bpf(2) syscall number unknown on {machine}")
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_long(cmd), attr, ctypes.c_uint(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise BPFError(err, os.strerror(err))
    return int(ret)


def load_sched_cls(code: bytes, name: str = "", license: str = "GPL") -> int:
    """Load a SCHED_CLS program; return its fd (the caller closes it). On refusal,
    load again with the verifier log on and raise BPFError carrying it."""
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(license.encode())
    safe = "".join(c if c.isalnum() or c in "_." else "_" for c in name)[:15].encode()

    def attempt(log_level: int, log_buf) -> int:
        raw = _PROG_LOAD.pack(BPF_PROG_TYPE_SCHED_CLS, len(code) // 8, ctypes.addressof(insns),
                              ctypes.addressof(lic), log_level,
                              len(log_buf) if log_buf is not None else 0,
                              ctypes.addressof(log_buf) if log_buf is not None else 0, 0, 0, safe)
        attr = ctypes.create_string_buffer(raw.ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
        return _bpf(BPF_PROG_LOAD, attr)

    try:
        return attempt(0, None)
    except BPFError:
        log = ctypes.create_string_buffer(1 << 16)
        try:
            return attempt(1, log)
        except BPFError as e:
            raise BPFError(e.errno, f"bpf(BPF_PROG_LOAD) {name}: {e.strerror}",
                           log.value.decode(errors="replace")) from None
