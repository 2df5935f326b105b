import COpenSSL
import Foundation

/// A 256-bit key for `AESGCM`. Its `description` is redacted.
public struct SymmetricKey: Sendable, Equatable, CustomStringConvertible {
    public static let byteCount = 32
    let bytes: [UInt8]

    /// Wraps existing key material (for example a master key read from a systemd credential).
    public init(bytes: some Collection<UInt8>) throws {
        guard bytes.count == Self.byteCount else {
            throw CryptoError(.invalidSymmetricKey, "an AES-256 key is \(Self.byteCount) bytes, not \(bytes.count)")
        }
        self.bytes = Array(bytes)
    }

    /// A fresh key from the system's secure random generator.
    public static func generate() throws -> SymmetricKey {
        try SymmetricKey(bytes: SecureRandom.bytes(count: byteCount))
    }

    /// The raw key material, for storing in a 0600 key file. Secret: never log it.
    public var rawBytes: [UInt8] { bytes }

    public var description: String { "SymmetricKey(redacted)" }
}

/// AES-256-GCM for secrets at rest.
///
/// A sealed box is `version (1 byte, 0x01) ‖ nonce (12) ‖ ciphertext ‖ tag (16)`. The nonce is random per seal;
/// the associated data (for example a table and row id) is authenticated but not stored, so a sealed value moved
/// to another row fails to open.
public enum AESGCM {
    static let version: UInt8 = 1
    static let nonceSize = 12
    static let tagSize = 16
    /// Bytes a sealed box adds to its plaintext.
    public static let overhead = 1 + nonceSize + tagSize

    public static func seal(_ plaintext: some ContiguousBytes, using key: SymmetricKey,
                            authenticating associatedData: some ContiguousBytes = [UInt8]()) throws -> [UInt8] {
        try seal(plaintext, using: key, nonce: SecureRandom.bytes(count: nonceSize), authenticating: associatedData)
    }

    /// Seals with a caller-chosen nonce: only for known-answer tests. A nonce must never repeat under one key.
    static func seal(_ plaintext: some ContiguousBytes, using key: SymmetricKey, nonce: [UInt8],
                     authenticating associatedData: some ContiguousBytes) throws -> [UInt8] {
        precondition(nonce.count == nonceSize, "AES-GCM nonces are \(nonceSize) bytes")
        guard let context = EVP_CIPHER_CTX_new() else {
            throw CryptoError.openSSL(.internalError, "could not allocate a cipher context")
        }
        defer { EVP_CIPHER_CTX_free(context) }
        let plaintextCount = plaintext.withUnsafeBytes(\.count)
        var box = [UInt8](repeating: 0, count: overhead + plaintextCount)
        box[0] = version
        box.replaceSubrange(1...nonceSize, with: nonce)
        let sealed: Bool = box.withUnsafeMutableBufferPointer { output in
            var length: Int32 = 0
            guard EVP_EncryptInit_ex(context, EVP_aes_256_gcm(), nil, key.bytes, nonce) == 1,
                  associatedData.withUnsafeBytes({ aad in
                      EVP_EncryptUpdate(context, nil, &length, aad.baseAddress?.assumingMemoryBound(to: UInt8.self),
                                        Int32(aad.count))
                  }) == 1,
                  plaintext.withUnsafeBytes({ input in
                      EVP_EncryptUpdate(context, output.baseAddress! + 1 + nonceSize, &length,
                                        input.baseAddress?.assumingMemoryBound(to: UInt8.self), Int32(input.count))
                  }) == 1,
                  EVP_EncryptFinal_ex(context, output.baseAddress! + 1 + nonceSize + Int(length), &length) == 1,
                  EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_GET_TAG, Int32(tagSize),
                                      output.baseAddress! + 1 + nonceSize + plaintextCount) == 1
            else { return false }
            return true
        }
        guard sealed else { throw CryptoError.openSSL(.encryptionFailed, "AES-256-GCM encryption failed") }
        return box
    }

    public static func open(_ box: some ContiguousBytes, using key: SymmetricKey,
                            authenticating associatedData: some ContiguousBytes = [UInt8]()) throws -> [UInt8] {
        let box = box.withUnsafeBytes { Array($0) }
        guard box.count >= overhead else {
            throw CryptoError(.malformedSealedBox, "sealed data is \(box.count) bytes; at least \(overhead) expected")
        }
        guard box[0] == version else {
            throw CryptoError(.malformedSealedBox, "sealed data has format version \(box[0]); only \(version) is known")
        }
        guard let context = EVP_CIPHER_CTX_new() else {
            throw CryptoError.openSSL(.internalError, "could not allocate a cipher context")
        }
        defer { EVP_CIPHER_CTX_free(context) }
        let ciphertextCount = box.count - overhead
        var plaintext = [UInt8](repeating: 0, count: ciphertextCount)
        var tag = Array(box.suffix(tagSize))
        let setUp: Bool = box.withUnsafeBufferPointer { input in
            var length: Int32 = 0
            return EVP_DecryptInit_ex(context, EVP_aes_256_gcm(), nil, key.bytes, input.baseAddress! + 1) == 1
                && associatedData.withUnsafeBytes({ aad in
                    EVP_DecryptUpdate(context, nil, &length, aad.baseAddress?.assumingMemoryBound(to: UInt8.self),
                                      Int32(aad.count))
                }) == 1
                && plaintext.withUnsafeMutableBufferPointer({ output in
                    EVP_DecryptUpdate(context, output.baseAddress, &length, input.baseAddress! + 1 + nonceSize,
                                      Int32(ciphertextCount))
                }) == 1
                && EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_SET_TAG, Int32(tagSize), &tag) == 1
        }
        guard setUp else { throw CryptoError.openSSL(.internalError, "AES-256-GCM decryption could not start") }
        var finalLength: Int32 = 0
        let authentic = plaintext.withUnsafeMutableBufferPointer { output in
            // GCM emits no bytes at Final; it only checks the tag.
            EVP_DecryptFinal_ex(context, output.baseAddress.map { $0 + ciphertextCount } ?? nil, &finalLength) == 1
        }
        guard authentic else {
            OpenSSLErrorQueue.clear()
            throw CryptoError(.authenticationFailed,
                              "sealed data failed authentication (wrong key, wrong associated data, or altered)")
        }
        return plaintext
    }
}

/// The system's cryptographically secure random generator (OpenSSL's DRBG, seeded from the kernel).
public enum SecureRandom {
    public static func bytes(count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        guard count == 0 || RAND_bytes(&bytes, Int32(count)) == 1 else {
            throw CryptoError.openSSL(.randomFailed, "the secure random generator failed")
        }
        return bytes
    }

    /// `byteCount` random bytes as lowercase hex (so twice as many characters): for OAuth `state`, request ids.
    public static func hexToken(byteCount: Int = 32) throws -> String {
        try bytes(count: byteCount).hexString
    }
}

extension Sequence<UInt8> {
    /// Lowercase hexadecimal, two characters a byte.
    public var hexString: String {
        let digits: [UInt8] = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(underestimatedCount * 2)
        for byte in self {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
