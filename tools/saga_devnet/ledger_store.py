"""The peer's ledger on disk: an append-only block file plus SQLite indexes and world state.

Durability order: a block is appended to the block file and fsynced first; the SQLite
transaction (block index, txid index, world state, pending queue trim) follows. After a
crash between the two, opening the store re-applies the blocks the index lacks, so the
block file is the single source of truth, as Fabric's block store is for its state DB.

Envelopes accepted by Submit wait in the `pending` table (synchronous commit), so an
acknowledged Submit survives a crash and is ordered after the restart.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import zlib
from collections.abc import Iterable
from importlib import import_module
from pathlib import Path
from typing import Any

from saga_devnet import blocks
from saga_devnet.protos import common_pb2, transaction_pb2
from saga_devnet.txparse import parse_envelope

lifecycle_db_pb2: Any = import_module("fabric_protos.peer.lifecycle.db_pb2")
LIFECYCLE = "_lifecycle"


def lifecycle_sequence_key(chaincode: str) -> str:
    """The `_lifecycle` key holding a chaincode's committed sequence (lifecycle/serializer.go)."""
    return f"namespaces/fields/{chaincode}/Sequence"


# length of block bytes, crc32 of them, highest pending seq the block consumed
_RECORD = struct.Struct(">IIq")
VALID = transaction_pb2.VALID

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (num INTEGER PRIMARY KEY, offset INTEGER, length INTEGER,
    hash BLOB, last_seq INTEGER);
CREATE TABLE IF NOT EXISTS txs (txid TEXT PRIMARY KEY, block INTEGER, txnum INTEGER, code INTEGER);
CREATE TABLE IF NOT EXISTS state (ns TEXT, key TEXT, value BLOB, block INTEGER, txnum INTEGER,
    PRIMARY KEY (ns, key));
CREATE TABLE IF NOT EXISTS pending (seq INTEGER PRIMARY KEY AUTOINCREMENT, envelope BLOB);
"""


class LedgerStore:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._path = directory / "blockfile"
        self._db = sqlite3.connect(directory / "index.sqlite", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._file = open(self._path, "a+b")  # noqa: SIM115 - held open for the store's life
        self.recover()

    # -- recovery ---------------------------------------------------------------------------

    def _records(self) -> list[tuple[int, int, int]]:
        """(offset, length, last_seq) of every complete record; truncates a torn tail."""
        out = []
        with open(self._path, "rb") as f:
            data = f.read()
        pos = 0
        while pos + _RECORD.size <= len(data):
            length, crc, last_seq = _RECORD.unpack_from(data, pos)
            start = pos + _RECORD.size
            body = data[start : start + length]
            if len(body) < length or zlib.crc32(body) != crc:
                break
            out.append((start, length, last_seq))
            pos = start + length
        if pos != len(data):
            # A crash mid-append leaves a partial record that was never acknowledged.
            self._file.truncate(pos)
            os.fsync(self._file.fileno())
        return out

    def recover(self) -> None:
        """Index every block the file holds and the index lacks; idempotent."""
        records = self._records()
        indexed = self.height
        for num in range(indexed, len(records)):
            offset, length, last_seq = records[num]
            block = self._read(offset, length)
            self.index_block(block, offset, length, last_seq)

    # -- writing ----------------------------------------------------------------------------

    def add_pending(self, envelope: bytes) -> int:
        cur = self._db.execute("INSERT INTO pending (envelope) VALUES (?)", (envelope,))
        return int(cur.lastrowid or 0)

    def pending(self, limit: int) -> list[tuple[int, bytes]]:
        rows = self._db.execute(
            "SELECT seq, envelope FROM pending ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        return [(int(s), bytes(e)) for s, e in rows]

    def pending_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM pending").fetchone()[0])

    def append_block(self, block: common_pb2.Block, last_seq: int) -> tuple[int, int]:
        """Append durably; returns (offset, length) for index_block."""
        raw = block.SerializeToString()
        self._file.seek(0, os.SEEK_END)
        offset = self._file.tell() + _RECORD.size
        self._file.write(_RECORD.pack(len(raw), zlib.crc32(raw), last_seq) + raw)
        self._file.flush()
        os.fsync(self._file.fileno())
        return offset, len(raw)

    def index_block(self, block: common_pb2.Block, offset: int, length: int, last_seq: int) -> None:
        """Index an appended block and apply its VALID writes to world state, atomically."""
        num = block.header.number
        codes = blocks.tx_codes(block)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO blocks VALUES (?,?,?,?,?)",
                (num, offset, length, blocks.header_hash(block.header), last_seq),
            )
            for txnum, raw in enumerate(block.data.data):
                try:
                    tx = parse_envelope(raw)
                except ValueError:
                    continue
                code = codes[txnum] if txnum < len(codes) else VALID
                if tx.txid:
                    # First commit wins: a later duplicate never replaces the original's record.
                    db.execute(
                        "INSERT OR IGNORE INTO txs VALUES (?,?,?,?)", (tx.txid, num, txnum, code)
                    )
                if code != VALID:
                    continue
                for ns, kv in tx.kv_sets():
                    for w in kv.writes:
                        if w.is_delete:
                            db.execute("DELETE FROM state WHERE ns=? AND key=?", (ns, w.key))
                        else:
                            db.execute(
                                "INSERT OR REPLACE INTO state VALUES (?,?,?,?,?)",
                                (ns, w.key, w.value, num, txnum),
                            )
            db.execute("DELETE FROM pending WHERE seq <= ?", (last_seq,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def ensure_lifecycle(self, chaincodes: Iterable[str]) -> None:
        """World state of `_lifecycle` as if each chaincode's definition (sequence 1) had been
        committed: the key every endorsement reads (lifecycle.ChaincodeEndorsementInfo). The
        devnet has no lifecycle transactions, so the version is (0, 0), the genesis block's."""
        for name in chaincodes:
            self._db.execute(
                "INSERT OR IGNORE INTO state VALUES (?,?,?,0,0)",
                (
                    LIFECYCLE,
                    lifecycle_sequence_key(name),
                    lifecycle_db_pb2.StateData(Int64=1).SerializeToString(),
                ),
            )

    # -- reading ----------------------------------------------------------------------------

    def _read(self, offset: int, length: int) -> common_pb2.Block:
        self._file.seek(offset)
        block = common_pb2.Block()
        block.ParseFromString(self._file.read(length))
        return block

    @property
    def height(self) -> int:
        row = self._db.execute("SELECT MAX(num) FROM blocks").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def last_hash(self) -> bytes:
        row = self._db.execute("SELECT hash FROM blocks ORDER BY num DESC LIMIT 1").fetchone()
        return bytes(row[0]) if row else b""

    def get_block(self, num: int) -> common_pb2.Block | None:
        row = self._db.execute("SELECT offset, length FROM blocks WHERE num=?", (num,)).fetchone()
        return self._read(int(row[0]), int(row[1])) if row else None

    def tx_status(self, txid: str) -> tuple[int, int, int] | None:
        """(validation code, block number, tx number) of the txid's first commit."""
        row = self._db.execute(
            "SELECT code, block, txnum FROM txs WHERE txid=?", (txid,)
        ).fetchone()
        return (int(row[0]), int(row[1]), int(row[2])) if row else None

    def get_state(self, namespace: str, key: str) -> tuple[bytes, tuple[int, int]] | None:
        row = self._db.execute(
            "SELECT value, block, txnum FROM state WHERE ns=? AND key=?", (namespace, key)
        ).fetchone()
        return (bytes(row[0]), (int(row[1]), int(row[2]))) if row else None

    def get_state_by_range(
        self, namespace: str, start: str, end: str
    ) -> list[tuple[str, bytes, tuple[int, int]]]:
        # An empty end means "to the end of the namespace", as in the shim's GetStateByRange.
        sql = "SELECT key, value, block, txnum FROM state WHERE ns=? AND key>=?"
        args: list[str] = [namespace, start]
        if end:
            sql += " AND key<?"
            args.append(end)
        rows = self._db.execute(sql + " ORDER BY key", args).fetchall()
        return [(str(k), bytes(v), (int(b), int(t))) for k, v, b, t in rows]

    def close(self) -> None:
        self._file.close()
        self._db.close()
