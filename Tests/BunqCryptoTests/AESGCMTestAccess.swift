@testable import BunqCrypto

/// Reaches the internal fixed-nonce seal for known-answer tests only.
enum AESGCMTestAccess {
    static func seal(_ message: [UInt8], key: SymmetricKey, nonce: [UInt8], aad: [UInt8]) throws -> [UInt8] {
        try AESGCM.seal(message, using: key, nonce: nonce, authenticating: aad)
    }
}
