// The official Fabric Gateway client (@hyperledger/fabric-gateway), unchanged, against a
// Fabric network: the devnet or a real one (saga_fabricnet). It uses only what the network
// wrote: a common connection profile and a user's MSP folder (plus the user's TLS client pair
// under mutual TLS).
//
//   node interop.mjs --profile DIR/.../connection-org1.json \
//       --msp DIR/.../users/User1@org1.example.com/msp [--tls-client DIR/.../User1@.../tls] \
//       [--channel mychannel] [--chaincode sagafacts] [--events-chaincode devkv] \
//       [--read-key KEY]
//
// --read-key: a key another client (the product's Python client) recorded; its record is
// read with GetRecord and reported as `read`, so the caller can compare what each client sees.
//
// Prints one JSON line with what it observed; exits non-zero on the first failed check.

import { createHash, createPrivateKey, randomUUID } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import * as grpc from '@grpc/grpc-js';
import { EndorseError, connect, signers } from '@hyperledger/fabric-gateway';
import { common, peer } from '@hyperledger/fabric-protos';

const { values: opts } = parseArgs({
    options: {
        profile: { type: 'string' },
        msp: { type: 'string' },
        'tls-client': { type: 'string' },
        channel: { type: 'string', default: 'mychannel' },
        chaincode: { type: 'string', default: 'sagafacts' },
        'events-chaincode': { type: 'string' },
        'read-key': { type: 'string' },
    },
});
if (!opts.profile || !opts.msp) {
    console.error('usage: node interop.mjs --profile connection-orgN.json --msp USER/msp');
    process.exit(2);
}

const utf8 = new TextDecoder();
const report = { checks: [] };

function check(name, ok, detail) {
    report.checks.push(name);
    if (!ok) {
        throw new Error(`check failed: ${name}${detail === undefined ? '' : `: ${detail}`}`);
    }
}

function onlyFile(dir) {
    const files = readdirSync(dir).filter((f) => !f.startsWith('.'));
    if (files.length !== 1) {
        throw new Error(`expected one file in ${dir}, found ${files.length}`);
    }
    return readFileSync(join(dir, files[0]));
}

// Connection profile: the org, its MSP id and its first peer's endpoint and TLS root.
const profile = JSON.parse(readFileSync(opts.profile, 'utf8'));
const orgName = profile.client.organization;
const org = profile.organizations[orgName];
const peerName = org.peers[0];
const peerCfg = profile.peers[peerName];
const endpoint = peerCfg.url.replace(/^grpcs?:\/\//, '');
const tlsRoot = Buffer.from(peerCfg.tlsCACerts.pem);
const hostOverride = peerCfg.grpcOptions?.['ssl-target-name-override'] ?? peerName;

const credentials = opts['tls-client']
    ? grpc.credentials.createSsl(
          tlsRoot,
          readFileSync(join(opts['tls-client'], 'client.key')),
          readFileSync(join(opts['tls-client'], 'client.crt')),
      )
    : grpc.credentials.createSsl(tlsRoot);
const client = new grpc.Client(endpoint, credentials, {
    'grpc.ssl_target_name_override': hostOverride,
    'grpc.default_authority': hostOverride,
});

const certificate = onlyFile(join(opts.msp, 'signcerts'));
const gateway = connect({
    client,
    identity: { mspId: org.mspid, credentials: certificate },
    signer: signers.newPrivateKeySigner(createPrivateKey(onlyFile(join(opts.msp, 'keystore')))),
    evaluateOptions: () => ({ deadline: Date.now() + 15000 }),
    endorseOptions: () => ({ deadline: Date.now() + 30000 }),
    submitOptions: () => ({ deadline: Date.now() + 15000 }),
    commitStatusOptions: () => ({ deadline: Date.now() + 60000 }),
    chaincodeEventsOptions: () => ({ deadline: Date.now() + 30000 }),
});

function alreadyRecorded(err) {
    if (!(err instanceof EndorseError)) {
        throw err;
    }
    const messages = [err.message, ...err.details.map((d) => d.message)];
    const hit = messages.find((m) => m.includes('ALREADY_RECORDED:'));
    return { err, record: hit && JSON.parse(hit.slice(hit.indexOf('ALREADY_RECORDED:') + 17)) };
}

async function main() {
    const network = gateway.getNetwork(opts.channel);
    const contract = network.getContract(opts.chaincode);
    const key = `interop/${randomUUID()}`;
    report.key = key;

    // Evaluate: nothing recorded yet.
    const before = await contract.evaluateTransaction('GetRecord', key);
    check('evaluate GetRecord of a new key is empty', before.length === 0, utf8.decode(before));

    // Endorse, keep the prepared transaction's bytes, submit, read commit status.
    const args = [key, 'order-interop', '1250', 'EUR', 'customer-1'];
    const proposal = contract.newProposal('RecordPayment', { arguments: args });
    const txid = proposal.getTransactionId();
    report.txid = txid;
    const transaction = await proposal.endorse();
    check('endorsed transaction keeps the proposal txid', transaction.getTransactionId() === txid);
    const result = JSON.parse(utf8.decode(transaction.getResult()));
    check('RecordPayment returns the record', result.key === key && result.txid === txid);
    report.record = result;
    const envelope = transaction.getBytes();
    const commit = await transaction.submit();
    const status = await commit.getStatus();
    report.block = Number(status.blockNumber);
    check('commit status is VALID', status.successful && status.code === peer.TxValidationCode.VALID,
        `code ${status.code}`);
    check('commit status names the txid', status.transactionId === txid);

    // Evaluate again: the committed record.
    const after = JSON.parse(utf8.decode(await contract.evaluateTransaction('GetRecord', key)));
    check('evaluate GetRecord returns the committed record', JSON.stringify(after) === JSON.stringify(result));

    // qscc knows the transaction, its code, and the txid is sha256(nonce || creator) as sent.
    const qscc = network.getContract('qscc');
    const processed = peer.ProcessedTransaction.deserializeBinary(
        await qscc.evaluateTransaction('GetTransactionByID', opts.channel, txid),
    );
    check('qscc GetTransactionByID gives VALID', processed.getValidationcode() === peer.TxValidationCode.VALID);
    const payload = common.Payload.deserializeBinary(processed.getTransactionenvelope().getPayload_asU8());
    const sigHeader = common.SignatureHeader.deserializeBinary(payload.getHeader().getSignatureHeader_asU8());
    const computed = createHash('sha256')
        .update(Buffer.concat([Buffer.from(sigHeader.getNonce_asU8()), Buffer.from(sigHeader.getCreator_asU8())]))
        .digest('hex');
    check('ledger txid is sha256(nonce || creator)', computed === txid);

    // The same signed envelope again (what a retry after a lost reply does): no second VALID tx.
    const again = await gateway.newTransaction(envelope).submit();
    const againStatus = await again.getStatus();
    check('resubmitted envelope reports the first commit', againStatus.transactionId === txid &&
        againStatus.code === peer.TxValidationCode.VALID && againStatus.blockNumber === status.blockNumber,
        `code ${againStatus.code} block ${againStatus.blockNumber}`);

    // A new transaction on the same key is refused at endorsement, carrying the record.
    let refused;
    try {
        await contract.submitTransaction('RecordPayment', ...args);
    } catch (err) {
        refused = alreadyRecorded(err);
    }
    check('a second transaction for the key fails endorsement', refused !== undefined);
    check('the refusal carries the existing record', JSON.stringify(refused.record) === JSON.stringify(result),
        refused.err.message);
    report.refusal = refused.err.details.map((d) => d.message)[0] ?? refused.err.message;

    // Bad arguments: a clear refusal, nothing submitted.
    try {
        await contract.submitTransaction('RecordPayment', `${key}-bad`, 'o', '12.50', 'EUR');
        check('bad arguments are refused', false);
    } catch (err) {
        const text = [err.message, ...(err.details ?? []).map((d) => d.message)].join(' ');
        check('bad arguments are refused', err instanceof EndorseError && text.includes('INVALID_ARGUMENT:'), text);
    }

    // A record another client wrote.
    if (opts['read-key']) {
        const raw = await contract.evaluateTransaction('GetRecord', opts['read-key']);
        check('evaluate GetRecord of --read-key finds its record', raw.length > 0);
        report.read = JSON.parse(utf8.decode(raw));
    }

    // Chaincode events, from a chaincode that emits them.
    if (opts['events-chaincode']) {
        const evKey = `ev-${randomUUID()}`;
        const evCommit = await network.getContract(opts['events-chaincode']).submitAsync('create', {
            arguments: [evKey, 'v'],
        });
        const evStatus = await evCommit.getStatus();
        check('events chaincode transaction is VALID', evStatus.successful);
        const events = await network.getChaincodeEvents(opts['events-chaincode'], {
            startBlock: evStatus.blockNumber,
        });
        try {
            for await (const event of events) {
                if (event.transactionId !== evCommit.getTransactionId()) continue;
                check('chaincode event arrives with its block and payload',
                    event.blockNumber === evStatus.blockNumber && utf8.decode(event.payload) === evKey);
                report.event = event.eventName;
                break;
            }
        } finally {
            events.close();
        }
    }
}

try {
    await main();
    console.log(JSON.stringify({ ok: true, ...report }));
} catch (err) {
    console.log(JSON.stringify({ ok: false, error: String(err?.stack ?? err), ...report }));
    process.exitCode = 1;
} finally {
    gateway.close();
    client.close();
}
