"""The query system chaincode: ledger lookups through Evaluate, with qscc's messages."""

from __future__ import annotations

from saga_devnet import blocks
from saga_devnet.ledger_store import LedgerStore
from saga_devnet.protos import common_pb2, ledger_pb2, transaction_pb2

Result = tuple[int, str, bytes]  # status, message, payload


def _error(message: str) -> Result:
    return 500, message, b""


def invoke(store: LedgerStore, channel: str, args: list[bytes]) -> Result:
    if len(args) < 2:
        return _error(f"Incorrect number of arguments, {len(args)}")
    fn = args[0].decode("utf-8", "replace")
    cid = args[1].decode("utf-8", "replace")
    if not cid:
        return _error("ChainID must not be nil.")
    if cid != channel:
        return _error(f"Invalid chain ID, {cid}")
    rest = [a.decode("utf-8", "replace") for a in args[2:]]
    if fn == "GetChainInfo":
        return _chain_info(store)
    if fn in ("GetTransactionByID", "GetBlockByNumber", "GetBlockByTxID") and not rest:
        return _error(f"missing 3rd argument for {fn}")
    if fn == "GetTransactionByID":
        return _transaction(store, rest[0])
    if fn == "GetBlockByTxID":
        found = store.tx_status(rest[0])
        if found is None:
            return _error(
                f"Failed to get block for txID {rest[0]}, error no such transaction ID "
                f"[{rest[0]}] in index"
            )
        return _block(store, found[1])
    if fn == "GetBlockByNumber":
        try:
            num = int(rest[0])
        except ValueError:
            return _error(f"Failed to parse block number with error {rest[0]!r} is not a number")
        return _block(store, num)
    return _error(f"Requested function {fn} not found.")


def _chain_info(store: LedgerStore) -> Result:
    height = store.height
    info = ledger_pb2.BlockchainInfo(height=height)
    if height:
        last = store.get_block(height - 1)
        assert last is not None
        info.currentBlockHash = blocks.header_hash(last.header)
        info.previousBlockHash = last.header.previous_hash
    return 200, "", info.SerializeToString()


def _block(store: LedgerStore, num: int) -> Result:
    block = store.get_block(num)
    if block is None:
        return _error(f"Failed to get block number {num}, error Entry not found in index")
    return 200, "", block.SerializeToString()


def _transaction(store: LedgerStore, txid: str) -> Result:
    found = store.tx_status(txid)
    block = store.get_block(found[1]) if found else None
    if found is None or block is None:
        return _error(
            f"Failed to get transaction with id {txid}, error no such transaction ID [{txid}] "
            "in index"
        )
    code, _num, txnum = found
    env = common_pb2.Envelope()
    env.ParseFromString(block.data.data[txnum])
    processed = transaction_pb2.ProcessedTransaction(transactionEnvelope=env, validationCode=code)
    return 200, "", processed.SerializeToString()
