// Where the console finds the edge: the origin that served it, unless a dev build says otherwise.
export const EDGE_URL: string = (import.meta.env.VITE_EDGE_URL as string | undefined) || window.location.origin;
