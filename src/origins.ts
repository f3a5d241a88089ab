// Browser origins as --cors-origins lists them; pure, so that the configuration can check them.

/** An http(s) origin (scheme, host, optional port) as a browser writes it in `Origin`, if `item` is one. */
function originOf(item: string): string | undefined {
  let url: URL;
  try {
    url = new URL(item);
  } catch {
    return undefined;
  }
  const bare =
    /^https?:$/.test(url.protocol) &&
    url.pathname === "/" &&
    !/[?#]/.test(item) &&
    !url.username &&
    !url.password;
  return bare ? url.origin : undefined;
}

/**
 * The origins of --cors-origins, each written as a browser sends it in `Origin` (lowercase, without
 * the scheme's default port or a trailing slash), or "*"; and what is wrong with them.
 */
export function parseOrigins(raw: string): { origins: string[]; problems: string[] } {
  const origins: string[] = [];
  const problems: string[] = [];
  for (const item of raw.split(",").map((s) => s.trim())) {
    if (!item) continue;
    const origin = item === "*" ? item : originOf(item);
    if (origin) origins.push(origin);
    else
      problems.push(
        `--cors-origins: "${item.slice(0, 60)}" is not an origin such as https://app.example.com or http://127.0.0.1:8080 (http or https, a host, an optional port, no path), nor * (set --cors-origins)`,
      );
  }
  return { origins, problems };
}
