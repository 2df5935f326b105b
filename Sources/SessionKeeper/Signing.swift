import BunqAPI
import BunqCrypto
import Foundation
import Synchronization

/// Parsed installation keys, keyed by context and installation token (a new installation replaces the key).
final class SigningKeys: Sendable {
    /// Per context: the parsed key of its installation, and once asked for, the signature of the empty body
    /// (every GET and DELETE). PKCS#1 v1.5 is deterministic, so a cached signature is the very one a new
    /// computation would give; a new installation replaces the entry, and with it the signature.
    private let keys = Mutex<[String: (installationToken: String, key: RSAPrivateKey, emptyBody: String?)]>([:])

    /// The context's parsed installation key; `load` reads the full context from the store on a miss.
    func key(for name: String, load: () throws -> StoredContext?) throws -> RSAPrivateKey {
        try entry(name, load: load).key
    }

    /// The base64 signature of the empty body with the context's installation key, made once per key.
    func emptyBodySignature(for name: String, load: () throws -> StoredContext?) throws -> String {
        let entry = try entry(name, load: load)
        if let signature = entry.emptyBody { return signature }
        let signature = try entry.key.base64Signature(for: [UInt8]())
        keys.withLock { keys in
            if keys[name]?.installationToken == entry.installationToken { keys[name]?.emptyBody = signature }
        }
        return signature
    }

    private func entry(_ name: String, load: () throws -> StoredContext?) throws
        -> (installationToken: String, key: RSAPrivateKey, emptyBody: String?) {
        if let cached = keys.withLock({ $0[name] }) { return cached }
        guard let context = try load(), let pem = context.registration.installationKeyPEM,
              let token = context.registration.installationToken else {
            throw KeeperError(.unknownContext, "context \(name) has no installation yet")
        }
        let entry = (installationToken: token, key: try RSAPrivateKey(pem: pem), emptyBody: String?.none)
        keys.withLock { $0[name] = entry }
        return entry
    }

    /// The context's parsed key if it is already cached; never reads the store.
    func cachedKey(for name: String) -> RSAPrivateKey? { keys.withLock { $0[name]?.key } }

    func forget(_ context: String) { _ = keys.withLock { $0.removeValue(forKey: context) } }
}

extension Keeper {
    /// The base64 RSA-SHA256 signature of `body` with the context's installation key: what bunq expects in
    /// `X-Bunq-Client-Signature`. The key never leaves the daemon.
    public func sign(_ contextName: String, body: [UInt8]) async throws -> String {
        guard let record = await owner.record(contextName) else {
            throw KeeperError(.unknownContext, "no context named \(contextName)")
        }
        let key = try signingKeys.key(for: record.name) { try store.context(record.name) }
        return try key.base64Signature(for: body)
    }

    /// `sign` without suspending and without touching the store: nil when the context's key is not parsed yet
    /// (use `signBlocking` off the event loop then). About 0.2 ms of CPU, cheap enough to run where the request
    /// arrived instead of paying two thread hand-offs.
    public func signIfKeyLoaded(_ contextName: String, body: [UInt8]) throws -> String? {
        guard leases.entry(contextName) != nil else {
            throw KeeperError(.unknownContext, "no context named \(contextName)")
        }
        return try signingKeys.cachedKey(for: contextName)?.base64Signature(for: body)
    }

    /// `sign` without suspending, for a blocking-work thread pool: the context is checked in the lease table and
    /// the key comes from the parsed-key cache (read from the store on a miss).
    public func signBlocking(_ contextName: String, body: [UInt8]) throws -> String {
        guard leases.entry(contextName) != nil else {
            throw KeeperError(.unknownContext, "no context named \(contextName)")
        }
        return try signingKeys.key(for: contextName) { try store.context(contextName) }.base64Signature(for: body)
    }
}
