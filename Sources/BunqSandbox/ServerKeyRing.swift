import BunqCrypto
import Synchronization

/// bunq's server keys as the emulator hands them out: installations take them in turn, so a client that verifies a
/// reply with another installation's key fails, as it would against bunq.
///
/// A key is generated when an installation first needs it, and once per process: every emulator in a process
/// shares the ring. A 2048-bit key costs about a quarter of a CPU-second, most emulators see one or two
/// installations, and the test suite starts hundreds of emulators in one process; bunq itself signs for every
/// client with the same few keys.
final class ServerKeyRing: Sendable {
    /// How many keys installations take in turn.
    static let size = 3
    /// The process's ring.
    static let shared = ServerKeyRing()

    private struct Key {
        let privateKey: RSAPrivateKey
        let publicKeyPEM: String
    }

    /// Only ever appended to, never beyond `size`: an index once handed out stays valid.
    private let keys = Mutex<[Key]>([])

    /// Generates keys until there are `count` (at most `size`). Two callers at once may both generate; the ring
    /// keeps the first `size` keys, which wastes work but never hands out a key it does not keep.
    func prepare(_ count: Int) async throws {
        while available < min(count, Self.size) {
            let privateKey = try await RSAPrivateKey.generate()
            let key = Key(privateKey: privateKey, publicKeyPEM: try privateKey.publicKey.pem())
            keys.withLock { if $0.count < Self.size { $0.append(key) } }
        }
    }

    /// How many keys exist.
    var available: Int { keys.withLock { $0.count } }

    /// The key for the installation that is `ordinal`-th in its emulator (0-based): in turn over the keys that
    /// exist, which after `prepare(ordinal + 1)` is every key up to the ring's size.
    func index(forInstallation ordinal: Int) -> Int {
        ordinal % max(1, available)
    }

    func publicKeyPEM(at index: Int) -> String {
        keys.withLock { $0[index].publicKeyPEM }
    }

    func signature(at index: Int, for body: [UInt8]) throws -> [UInt8] {
        try keys.withLock { $0[index].privateKey }.signature(for: body)
    }
}
