//! Chinese phone numbers as `DialEx` expects them.
//!
//! [`PhoneNumber`] owns the product contract for what a caller or callee may look like and
//! turns every accepted spelling into the one national format the Call Center API dials:
//! mobiles (`1[3-9]` + 9 digits), landlines (`0` + area code + local number, 10–12 digits)
//! and the service numbers call centres display as caller (`400`/`800` + 7 digits, `95` +
//! 3–6 digits). International `+86`/`0086` spellings are folded into that format.
//!
//! Phone numbers are personal data, so the type is built to not leak them: `Debug` and
//! `Display` print a masked form, there is no `Serialize`, errors never echo the input, and
//! the full digits are only reachable through [`PhoneNumber::as_str`], which is meant for
//! the `DialEx` call itself.

use std::fmt;

/// The longest national number accepted: a landline, `0` + area code + local number.
const MAX_NATIONAL_DIGITS: usize = 12;

/// Size of the scanner's stack buffer. The longest accepted spelling is `0086` + an 11-digit
/// national significant number (15 digits), so more digits than this are rejected at once,
/// without allocating or reading the rest of an arbitrarily long input.
const MAX_SCANNED_DIGITS: usize = 16;

/// A validated Chinese phone number in national format (digits only, no prefix).
///
/// Constructed only by [`PhoneNumber::parse`], so holding one means the number passed the
/// contract's rules. `Debug` and `Display` mask it (`157****6617`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber(String);

/// Why a string is not an acceptable phone number.
///
/// Messages say what is wrong without repeating the number, so they can go into rejection
/// events and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// No digits at all.
    #[error("phone number is empty")]
    Empty,
    /// A letter, symbol or other character outside the accepted formatting characters.
    #[error(
        "phone number may only contain digits, spaces, dashes, parentheses around the area code and a leading '+'"
    )]
    InvalidCharacter,
    /// Parentheses that are unbalanced, nested, repeated or not around an area code.
    #[error("parentheses are only allowed once, around the area code of a landline")]
    MisplacedParentheses,
    /// An international number for a country other than China.
    #[error("only Chinese numbers are accepted (no country code, +86 or 0086)")]
    UnsupportedCountryCode,
    /// `+86 0…`: the trunk prefix must be dropped after the country code.
    #[error("a trunk prefix 0 must not follow the +86 country code")]
    TrunkPrefixAfterCountryCode,
    /// More digits than any Chinese number has.
    #[error("phone number has too many digits")]
    TooLong,
    /// Starts like a mobile (`1`) but is not `1[3-9]` followed by 9 digits.
    #[error("not a valid mobile number (1, then 3-9, then 9 more digits)")]
    InvalidMobile,
    /// Starts like a landline (`0`) but is not `0` + area code + local number, 10–12 digits.
    #[error("not a valid landline number (0, area code and local number, 10-12 digits)")]
    InvalidLandline,
    /// Starts like a service number but has the wrong length.
    #[error("not a valid service number (400/800 and 7 digits, or 95 and 3-6 digits)")]
    InvalidServiceNumber,
    /// None of the above shapes, e.g. a local number without its area code.
    #[error("not a mobile, landline (with area code) or service number")]
    Unrecognised,
}

/// Where the one allowed pair of parentheses sat, as indexes into the scanned digits.
#[derive(Clone, Copy)]
enum Parens {
    None,
    Open { at: usize },
    Closed { at: usize, end: usize },
}

impl PhoneNumber {
    /// Validates `raw` and normalises it to national format.
    ///
    /// Spaces and dashes are ignored anywhere; one pair of parentheses may enclose the area
    /// code; a leading `+86` or `0086` is replaced by the national form (mobiles and
    /// `400`/`800` numbers as they are, landlines with the `0` trunk prefix added).
    ///
    /// # Errors
    ///
    /// A [`PhoneError`] naming the first rule `raw` breaks; it never contains the number.
    pub fn parse(raw: &str) -> Result<PhoneNumber, PhoneError> {
        let mut digits = [0u8; MAX_SCANNED_DIGITS];
        let mut len = 0;
        let mut plus = false;
        let mut parens = Parens::None;

        for c in raw.chars() {
            match c {
                '0'..='9' => {
                    if len == MAX_SCANNED_DIGITS {
                        return Err(PhoneError::TooLong);
                    }
                    // The match arm guarantees an ASCII digit, so the cast is lossless.
                    digits[len] = c as u8;
                    len += 1;
                }
                ' ' | '-' => {}
                '+' if len == 0 && !plus && matches!(parens, Parens::None) => plus = true,
                '(' => match parens {
                    Parens::None => parens = Parens::Open { at: len },
                    _ => return Err(PhoneError::MisplacedParentheses),
                },
                ')' => match parens {
                    Parens::Open { at } => parens = Parens::Closed { at, end: len },
                    _ => return Err(PhoneError::MisplacedParentheses),
                },
                _ => return Err(PhoneError::InvalidCharacter),
            }
        }
        let digits = &digits[..len];
        if digits.is_empty() {
            return Err(PhoneError::Empty);
        }

        let prefix_len = if plus {
            if !digits.starts_with(b"86") {
                return Err(PhoneError::UnsupportedCountryCode);
            }
            2
        } else if digits.starts_with(b"0086") {
            4
        } else if digits.starts_with(b"00") {
            // `00` is the international call prefix; no area code starts with 0.
            return Err(PhoneError::UnsupportedCountryCode);
        } else {
            0
        };

        let significant = &digits[prefix_len..];
        let (trunk, national): (&[u8], &[u8]) = if prefix_len == 0 {
            (b"", significant)
        } else {
            match significant {
                [] => return Err(PhoneError::Unrecognised),
                [b'0', ..] => return Err(PhoneError::TrunkPrefixAfterCountryCode),
                // Beijing's area code is 10, so `+86 10…` is a landline, not a mobile.
                [b'1', b'0', ..] => (b"0", significant),
                // Mobiles and 400/800 numbers are dialled the same nationally as after +86;
                // everything else from abroad is a landline that needs the trunk prefix back.
                [b'1', ..] => (b"", significant),
                [b'4' | b'8', b'0', b'0', ..] if significant.len() == 10 => (b"", significant),
                _ => (b"0", significant),
            }
        };
        let total = trunk.len() + national.len();
        if total > MAX_NATIONAL_DIGITS {
            return Err(PhoneError::TooLong);
        }

        let mut normalised = String::with_capacity(total);
        for &d in trunk.iter().chain(national) {
            normalised.push(char::from(d));
        }
        let kind = classify(normalised.as_bytes())?;

        match parens {
            Parens::None => {}
            Parens::Open { .. } => return Err(PhoneError::MisplacedParentheses),
            Parens::Closed { at, end } => {
                // The group must be the very first thing after any country code and hold
                // an area code (2-4 digits, with or without its trunk 0) of a landline.
                if at != prefix_len || !(2..=4).contains(&(end - at)) || kind != Kind::Landline {
                    return Err(PhoneError::MisplacedParentheses);
                }
            }
        }

        Ok(PhoneNumber(normalised))
    }

    /// The full national digits, e.g. `15732036617`.
    ///
    /// Only for building the `DialEx` request: anything that ends up in logs or events
    /// should use the masked `Display` form instead.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Writes the masked form: first 3 and last 4 digits kept, or only the last 2 for
    /// numbers of 7 digits or fewer, every other digit replaced by one `*`.
    fn fmt_masked(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.0.as_bytes();
        let (head, tail) = if digits.len() <= 7 { (0, 2) } else { (3, 4) };
        let mut buf = [b'*'; MAX_NATIONAL_DIGITS];
        // `parse` guarantees 5..=12 ASCII digits, so these ranges are in bounds; `get`
        // keeps a formatting call from ever panicking regardless.
        let masked = buf.get_mut(..digits.len()).ok_or(fmt::Error)?;
        let keep_tail = digits.len().saturating_sub(tail);
        for (i, (out, &d)) in masked.iter_mut().zip(digits).enumerate() {
            if i < head || i >= keep_tail {
                *out = d;
            }
        }
        let text = std::str::from_utf8(masked).map_err(|_| fmt::Error)?;
        f.pad(text)
    }
}

/// The shapes of number the contract accepts, after normalisation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mobile,
    Landline,
    Service,
}

/// Checks a national-format digit string against the contract's shapes.
fn classify(n: &[u8]) -> Result<Kind, PhoneError> {
    match n {
        [b'0', b'0', ..] => Err(PhoneError::UnsupportedCountryCode),
        [b'0', ..] if (10..=12).contains(&n.len()) => Ok(Kind::Landline),
        [b'0', ..] => Err(PhoneError::InvalidLandline),
        [b'1', b'3'..=b'9', ..] if n.len() == 11 => Ok(Kind::Mobile),
        [b'1', ..] => Err(PhoneError::InvalidMobile),
        [b'4' | b'8', b'0', b'0', ..] if n.len() == 10 => Ok(Kind::Service),
        [b'4' | b'8', b'0', b'0', ..] => Err(PhoneError::InvalidServiceNumber),
        [b'9', b'5', ..] if (5..=8).contains(&n.len()) => Ok(Kind::Service),
        [b'9', b'5', ..] => Err(PhoneError::InvalidServiceNumber),
        _ => Err(PhoneError::Unrecognised),
    }
}

/// The number as digits: for the internal follow-up jobs, which hold numbers as a request
/// does. Never used for events.
impl serde::Serialize for PhoneNumber {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Read back through [`PhoneNumber::parse`], so a number read is as valid as one decoded
/// from a request; the error says what is wrong without repeating the number.
impl<'de> serde::Deserialize<'de> for PhoneNumber {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        PhoneNumber::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_masked(f)
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_masked(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_inputs_are_normalised() {
        let cases = [
            // Mobiles, national and international.
            ("15732036617", "15732036617"),
            ("157-3203-6617", "15732036617"),
            ("157 3203 6617", "15732036617"),
            ("  15732036617  ", "15732036617"),
            ("13000000000", "13000000000"),
            ("19999999999", "19999999999"),
            ("+86 157-3203-6617", "15732036617"),
            ("+8615732036617", "15732036617"),
            ("0086 157 3203 6617", "15732036617"),
            ("008615732036617", "15732036617"),
            // Landlines.
            ("02285196281", "02285196281"),
            ("022-8519-6281", "02285196281"),
            ("0755-12345678", "075512345678"),
            ("010 1234 5678", "01012345678"),
            ("0571-1234567", "05711234567"),
            ("(022) 8519 6281", "02285196281"),
            ("(0755)12345678", "075512345678"),
            ("+86 22 8519 6281", "02285196281"),
            ("+86 (22) 8519 6281", "02285196281"),
            ("+86-755-1234-5678", "075512345678"),
            ("0086 10 1234 5678", "01012345678"),
            ("+86 (10) 1234 5678", "01012345678"),
            ("+86 951 2345678", "09512345678"),
            // Service numbers.
            ("4001234567", "4001234567"),
            ("400-123-4567", "4001234567"),
            ("800 123 4567", "8001234567"),
            ("+86 400 123 4567", "4001234567"),
            ("95588", "95588"),
            ("95-555", "95555"),
            ("951234", "951234"),
            ("95123456", "95123456"),
        ];
        for (raw, want) in cases {
            let got = PhoneNumber::parse(raw);
            assert_eq!(
                got.as_ref().map(PhoneNumber::as_str),
                Ok(want),
                "input {raw:?}"
            );
        }
    }

    #[test]
    fn rejected_inputs_say_why() {
        use PhoneError as E;
        let cases = [
            ("", E::Empty),
            ("   ", E::Empty),
            ("--", E::Empty),
            ("+", E::Empty),
            ("+86", E::Unrecognised),
            ("0086", E::Unrecognised),
            ("1573203661a", E::InvalidCharacter),
            ("abc", E::InvalidCharacter),
            ("157.3203.6617", E::InvalidCharacter),
            ("157\t3203\t6617", E::InvalidCharacter),
            ("１５７３２０３６６１７", E::InvalidCharacter),
            ("157+32036617", E::InvalidCharacter),
            ("++8615732036617", E::InvalidCharacter),
            ("(+86)15732036617", E::InvalidCharacter),
            ("+1 415 555 0100", E::UnsupportedCountryCode),
            ("+44 20 7946 0958", E::UnsupportedCountryCode),
            ("001 415 555 0100", E::UnsupportedCountryCode),
            ("0044 20 7946 0958", E::UnsupportedCountryCode),
            ("+86 0 22 8519 6281", E::TrunkPrefixAfterCountryCode),
            ("+8602285196281", E::TrunkPrefixAfterCountryCode),
            ("0086 022 8519 6281", E::TrunkPrefixAfterCountryCode),
            ("1573203661", E::InvalidMobile),
            ("157320366170", E::InvalidMobile),
            ("12345678901", E::InvalidMobile),
            ("11012345678", E::InvalidMobile),
            ("110", E::InvalidMobile),
            ("+86 1573203661", E::InvalidMobile),
            ("+86 12 3456 7890", E::InvalidMobile),
            ("022123456", E::InvalidLandline),
            ("0755123456789", E::TooLong),
            ("0", E::InvalidLandline),
            ("+86 95588", E::InvalidLandline),
            ("400123456", E::InvalidServiceNumber),
            ("80012345678", E::InvalidServiceNumber),
            ("95", E::InvalidServiceNumber),
            ("9512", E::InvalidServiceNumber),
            ("951234567", E::InvalidServiceNumber),
            ("85196281", E::Unrecognised),
            ("2", E::Unrecognised),
            ("8615732036617", E::TooLong),
            ("1234567890123456789", E::TooLong),
            ("+86 1573203661712", E::TooLong),
            ("(022 8519 6281", E::MisplacedParentheses),
            ("022) 8519 6281", E::MisplacedParentheses),
            ("(022)(8519) 6281", E::MisplacedParentheses),
            ("((022)) 8519 6281", E::MisplacedParentheses),
            ("022 (8519) 6281", E::MisplacedParentheses),
            ("(157) 3203 6617", E::MisplacedParentheses),
            ("(02285) 196281", E::MisplacedParentheses),
            ("(0) 2285196281", E::MisplacedParentheses),
            ("(400) 123 4567", E::MisplacedParentheses),
        ];
        for (raw, want) in cases {
            assert_eq!(PhoneNumber::parse(raw), Err(want), "input {raw:?}");
        }
    }

    #[test]
    fn error_messages_never_echo_the_number() {
        for raw in [
            "1573203661a",
            "+1 415 555 0100",
            "+86 0 22 8519 6281",
            "1573203661",
            "022123456",
            "400123456",
            "85196281",
            "(157) 3203 6617",
            "12345678901234567890",
        ] {
            let err = PhoneNumber::parse(raw).expect_err(raw);
            let message = err.to_string();
            let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
            assert!(!message.contains(&digits), "{message} echoes {raw}");
            let longest_digit_run = message
                .split(|c: char| !c.is_ascii_digit())
                .map(str::len)
                .max()
                .unwrap_or(0);
            assert!(longest_digit_run <= 4, "{message}");
        }
    }

    #[test]
    fn debug_and_display_mask_the_number() {
        let cases = [
            ("15732036617", "157****6617"),
            ("075512345678", "075*****5678"),
            ("02285196281", "022****6281"),
            ("4001234567", "400***4567"),
            ("95123456", "951*3456"),
            ("9512345", "*****45"),
            ("95588", "***88"),
        ];
        for (raw, masked) in cases {
            let n = PhoneNumber::parse(raw).expect(raw);
            assert_eq!(n.to_string(), masked);
            assert_eq!(format!("{n}"), masked);
            assert_eq!(format!("{n:?}"), masked);
            assert_eq!(format!("{n:#?}"), masked);
            assert_eq!(n.as_str(), raw);
        }
        let n = PhoneNumber::parse("15732036617").expect("valid");
        assert_eq!(format!("[{n:>13}]"), "[  157****6617]");
        assert_eq!(format!("{:?}", Some(&n)), "Some(157****6617)");
    }

    #[test]
    fn equal_numbers_compare_equal_whatever_the_spelling() {
        let a = PhoneNumber::parse("+86 157-3203-6617").expect("valid");
        let b = PhoneNumber::parse("15732036617").expect("valid");
        assert_eq!(a, b);
        assert_eq!(a.clone(), b);
    }

    #[test]
    fn arbitrary_and_huge_inputs_do_not_panic() {
        let long_digits = "1".repeat(1_000_000);
        let long_spaces = format!("{}15732036617", " ".repeat(1_000_000));
        let inputs = [
            "\u{0}",
            "\u{200b}15732036617",
            "１５７３２０３６６１７",
            "𝟏𝟓𝟕𝟑𝟐𝟎𝟑𝟔𝟔𝟏𝟕",
            "١٥٧٣٢٠٣٦٦١٧",
            "🙂",
            "电话15732036617",
            "157３2036617",
            "((((((((",
            "))))",
            "+++++",
            "-+86",
            long_digits.as_str(),
        ];
        for raw in inputs {
            assert!(PhoneNumber::parse(raw).is_err(), "{raw:?}");
        }
        assert_eq!(
            PhoneNumber::parse(&long_spaces).map(|n| n.as_str().to_owned()),
            Ok("15732036617".to_owned())
        );
        // Every char boundary of a mixed string: no slicing panics.
        let mixed = "+86 (22) 8519-6281 ✓ 電話";
        for (i, _) in mixed.char_indices() {
            let _ = PhoneNumber::parse(&mixed[..i]);
            let _ = PhoneNumber::parse(&mixed[i..]);
        }
    }
}
