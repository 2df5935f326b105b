import COpenSSL

/// A failure in a cryptographic operation: a stable `code` to branch on, a human `message` naming what failed,
/// and OpenSSL's own reason text when OpenSSL refused (read from its error queue at the failing call).
///
/// Messages never contain key material, plaintext or signatures.
public struct CryptoError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What went wrong, as a stable identifier for code and logs.
    public enum Code: String, Sendable, Equatable {
        /// The text is not PEM, or holds no block of the expected kind.
        case invalidPEM = "invalid_pem"
        /// A PEM block was found but OpenSSL could not decode it.
        case invalidKey = "invalid_key"
        /// The key is of another algorithm (EC, Ed25519, ...) where RSA is required.
        case unsupportedKeyType = "unsupported_key_type"
        /// The RSA key is shorter than 2048 bits.
        case weakKey = "weak_key"
        /// The private key is passphrase-protected; bunq-sessiond reads only unencrypted keys (secrets come
        /// from protected files or systemd credentials instead).
        case encryptedKey = "encrypted_key"
        /// RSA key generation failed.
        case keyGenerationFailed = "key_generation_failed"
        /// Creating a signature failed.
        case signingFailed = "signing_failed"
        /// The signature is not valid base64, or its length does not match the key.
        case malformedSignature = "malformed_signature"
        /// The signature is well-formed but does not match the message and key.
        case signatureMismatch = "signature_mismatch"
        /// The certificate could not be parsed.
        case invalidCertificate = "invalid_certificate"
        /// A symmetric key of the wrong size.
        case invalidSymmetricKey = "invalid_symmetric_key"
        /// Sealed data is truncated or of an unknown format version.
        case malformedSealedBox = "malformed_sealed_box"
        /// Sealed data failed authentication: wrong key, wrong associated data, or tampered bytes.
        case authenticationFailed = "authentication_failed"
        /// Encryption failed inside OpenSSL.
        case encryptionFailed = "encryption_failed"
        /// The system's random generator failed.
        case randomFailed = "random_failed"
        /// OpenSSL could not allocate or run an operation that should not fail.
        case internalError = "internal_error"
    }

    public let code: Code
    public let message: String
    /// OpenSSL's reason strings for this failure, oldest first; nil when OpenSSL reported nothing.
    public let openSSLReason: String?

    public init(_ code: Code, _ message: String, openSSLReason: String? = nil) {
        self.code = code
        self.message = message
        self.openSSLReason = openSSLReason
    }

    public var description: String {
        if let openSSLReason { return "\(message) (\(code.rawValue); OpenSSL: \(openSSLReason))" }
        return "\(message) (\(code.rawValue))"
    }

    /// An error for a failed OpenSSL call, draining OpenSSL's thread-local error queue so the reason belongs to
    /// this call and no stale entry leaks into the next one.
    static func openSSL(_ code: Code, _ message: String) -> CryptoError {
        CryptoError(code, message, openSSLReason: OpenSSLErrorQueue.drain())
    }
}

/// OpenSSL's per-thread error queue. Every failing call pushes entries; they must be read (or cleared) on the
/// same thread, right after the call, before anything else runs there.
enum OpenSSLErrorQueue {
    /// Reads and removes every queued error, oldest first, joined with "; ".
    static func drain() -> String? {
        var reasons: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            reasons.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return reasons.isEmpty ? nil : reasons.joined(separator: "; ")
    }

    /// Discards queued errors, e.g. from an expected failure such as a key/certificate mismatch probe.
    static func clear() {
        ERR_clear_error()
    }
}
