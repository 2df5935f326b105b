import BunqAPI
import BunqCrypto
import Foundation
import Synchronization

/// bunq's parsed public keys per context, keyed by their PEM (a new installation brings a new one).
final class ServerKeys: Sendable {
    private let keys = Mutex<[String: (pem: String, key: RSAPublicKey)]>([:])

    func key(for context: String, pem: String) throws -> RSAPublicKey {
        if let cached = keys.withLock({ $0[context] }), cached.pem == pem { return cached.key }
        let key = try RSAPublicKey(pem: pem)
        keys.withLock { $0[context] = (pem, key) }
        return key
    }
}

extension Keeper {
    /// The bunq client the daemon's own calls go through: the proxy forwards with it, so its requests take their
    /// slots from the same per-IP limiter.
    public var bunq: BunqClient { client }

    /// What forwarding a request in `context`'s current session needs; nil when no session may be handed out now
    /// (renewing, expired, needs attention). From memory: the key the registry published (read from the store, within
    /// its deadline, only for a context whose key was not published yet).
    public func forwardingSession(_ context: String) async throws -> ForwardingSession? {
        guard let entry = sessions.entry(context) else {
            throw KeeperError(.unknownContext, "no context named \(context)")
        }
        guard let session = entry.grantable(at: sessions.now), let pem = entry.serverPublicKeyPEM else { return nil }
        let key = try await signingKey(context)
        guard let emptyBody = try signingKeys.emptyBodySignature(for: context) else { return nil }
        return ForwardingSession(token: session.token, generation: entry.generation, signingKey: key,
                                 emptyBodySignature: emptyBody, serverKey: try serverKeys.key(for: context, pem: pem))
    }
}
