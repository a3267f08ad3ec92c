// Phone numbers are stored in E.164 ("+84909123456"), parsed with libphonenumber-js's full
// metadata like auth's and provider's, so the same input has the same normal form everywhere.
import { parsePhoneNumberWithError } from "libphonenumber-js/max";

/** The E.164 form of a number given with its country code, or undefined when it is not a valid number. */
export function normalizePhone(phone: string): string | undefined {
  const input = phone.trim();
  if (!input.startsWith("+")) return undefined;
  try {
    const parsed = parsePhoneNumberWithError(input);
    return parsed.isValid() ? parsed.number : undefined;
  } catch {
    return undefined;
  }
}
