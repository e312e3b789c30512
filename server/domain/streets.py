"""A street grammar: what a public street name may look like (pure).

A street is an optional pre-directional, a name (a numbered street like ``24th``, or
one to four name words), a suffix from USPS Publication 28 (Appendix C1: the primary
suffix names and the abbreviations the Postal Service recognizes for them) and an
optional post-directional: ``24th Ave NE``, ``N 45th St``, ``Martin Luther King Jr
Way S``. Streets without a suffix (``Broadway``, ``Avenue of the Stars``, freeway
ramps) are not recognized: the caller withholds them rather than guess.

Public text is *built* from the tokens matched here, in a standard spelling (suffixes
as Publication 28's standard abbreviation, directionals as N/NE/…); nothing between
or around them is carried over.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# USPS Publication 28, Appendix C1: standard abbreviation -> every spelling it accepts
# (the primary name included).
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "ALY": ("ALLEE", "ALLEY", "ALLY", "ALY"),
    "ANX": ("ANEX", "ANNEX", "ANNX", "ANX"),
    "ARC": ("ARC", "ARCADE"),
    "AVE": ("AV", "AVE", "AVEN", "AVENU", "AVENUE", "AVN", "AVNUE"),
    "BYU": ("BAYOO", "BAYOU"),
    "BCH": ("BCH", "BEACH"),
    "BND": ("BEND", "BND"),
    "BLF": ("BLF", "BLUF", "BLUFF"),
    "BLFS": ("BLUFFS",),
    "BTM": ("BOT", "BTM", "BOTTM", "BOTTOM"),
    "BLVD": ("BLVD", "BOUL", "BOULEVARD", "BOULV"),
    "BR": ("BR", "BRNCH", "BRANCH"),
    "BRG": ("BRDGE", "BRG", "BRIDGE"),
    "BRK": ("BRK", "BROOK"),
    "BRKS": ("BROOKS",),
    "BG": ("BURG",),
    "BGS": ("BURGS",),
    "BYP": ("BYP", "BYPA", "BYPAS", "BYPASS", "BYPS"),
    "CP": ("CAMP", "CP", "CMP"),
    "CYN": ("CANYN", "CANYON", "CNYN"),
    "CPE": ("CAPE", "CPE"),
    "CSWY": ("CAUSEWAY", "CAUSWA", "CSWY"),
    "CTR": ("CEN", "CENT", "CENTER", "CENTR", "CENTRE", "CNTER", "CNTR", "CTR"),
    "CTRS": ("CENTERS",),
    "CIR": ("CIR", "CIRC", "CIRCL", "CIRCLE", "CRCL", "CRCLE"),
    "CIRS": ("CIRCLES",),
    "CLF": ("CLF", "CLIFF"),
    "CLFS": ("CLFS", "CLIFFS"),
    "CLB": ("CLB", "CLUB"),
    "CMN": ("COMMON",),
    "CMNS": ("COMMONS",),
    "COR": ("COR", "CORNER"),
    "CORS": ("CORNERS", "CORS"),
    "CRSE": ("COURSE", "CRSE"),
    "CT": ("COURT", "CT"),
    "CTS": ("COURTS", "CTS"),
    "CV": ("COVE", "CV"),
    "CVS": ("COVES",),
    "CRK": ("CREEK", "CRK"),
    "CRES": ("CRESCENT", "CRES", "CRSENT", "CRSNT"),
    "CRST": ("CREST",),
    "XING": ("CROSSING", "CRSSNG", "XING"),
    "XRD": ("CROSSROAD",),
    "XRDS": ("CROSSROADS",),
    "CURV": ("CURVE",),
    "DL": ("DALE", "DL"),
    "DM": ("DAM", "DM"),
    "DV": ("DIV", "DIVIDE", "DV", "DVD"),
    "DR": ("DR", "DRIV", "DRIVE", "DRV"),
    "DRS": ("DRIVES",),
    "EST": ("EST", "ESTATE"),
    "ESTS": ("ESTATES", "ESTS"),
    "EXPY": ("EXP", "EXPR", "EXPRESS", "EXPRESSWAY", "EXPW", "EXPY"),
    "EXT": ("EXT", "EXTENSION", "EXTN", "EXTNSN"),
    "EXTS": ("EXTS",),
    "FALL": ("FALL",),
    "FLS": ("FALLS", "FLS"),
    "FRY": ("FERRY", "FRRY", "FRY"),
    "FLD": ("FIELD", "FLD"),
    "FLDS": ("FIELDS", "FLDS"),
    "FLT": ("FLAT", "FLT"),
    "FLTS": ("FLATS", "FLTS"),
    "FRD": ("FORD", "FRD"),
    "FRDS": ("FORDS",),
    "FRST": ("FOREST", "FORESTS", "FRST"),
    "FRG": ("FORG", "FORGE", "FRG"),
    "FRGS": ("FORGES",),
    "FRK": ("FORK", "FRK"),
    "FRKS": ("FORKS", "FRKS"),
    "FT": ("FORT", "FRT", "FT"),
    "FWY": ("FREEWAY", "FREEWY", "FRWAY", "FRWY", "FWY"),
    "GDN": ("GARDEN", "GARDN", "GRDEN", "GRDN"),
    "GDNS": ("GARDENS", "GDNS", "GRDNS"),
    "GTWY": ("GATEWAY", "GATEWY", "GATWAY", "GTWAY", "GTWY"),
    "GLN": ("GLEN", "GLN"),
    "GLNS": ("GLENS",),
    "GRN": ("GREEN", "GRN"),
    "GRNS": ("GREENS",),
    "GRV": ("GROV", "GROVE", "GRV"),
    "GRVS": ("GROVES",),
    "HBR": ("HARB", "HARBOR", "HARBR", "HBR", "HRBOR"),
    "HBRS": ("HARBORS",),
    "HVN": ("HAVEN", "HVN"),
    "HTS": ("HEIGHTS", "HT", "HTS"),
    "HWY": ("HIGHWAY", "HIGHWY", "HIWAY", "HIWY", "HWAY", "HWY"),
    "HL": ("HILL", "HL"),
    "HLS": ("HILLS", "HLS"),
    "HOLW": ("HLLW", "HOLLOW", "HOLLOWS", "HOLW", "HOLWS"),
    "INLT": ("INLET", "INLT"),
    "IS": ("IS", "ISLAND", "ISLND"),
    "ISS": ("ISLANDS", "ISLNDS", "ISS"),
    "ISLE": ("ISLE", "ISLES"),
    "JCT": ("JCT", "JCTION", "JCTN", "JUNCTION", "JUNCTN", "JUNCTON"),
    "JCTS": ("JCTNS", "JCTS", "JUNCTIONS"),
    "KY": ("KEY", "KY"),
    "KYS": ("KEYS", "KYS"),
    "KNL": ("KNL", "KNOL", "KNOLL"),
    "KNLS": ("KNLS", "KNOLLS"),
    "LK": ("LK", "LAKE"),
    "LKS": ("LKS", "LAKES"),
    "LAND": ("LAND",),
    "LNDG": ("LANDING", "LNDG", "LNDNG"),
    "LN": ("LANE", "LN"),
    "LGT": ("LGT", "LIGHT"),
    "LGTS": ("LIGHTS",),
    "LF": ("LF", "LOAF"),
    "LCK": ("LCK", "LOCK"),
    "LCKS": ("LCKS", "LOCKS"),
    "LDG": ("LDG", "LDGE", "LODG", "LODGE"),
    "LOOP": ("LOOP", "LOOPS"),
    "MALL": ("MALL",),
    "MNR": ("MNR", "MANOR"),
    "MNRS": ("MANORS", "MNRS"),
    "MDW": ("MEADOW",),
    "MDWS": ("MDW", "MDWS", "MEADOWS", "MEDOWS"),
    "MEWS": ("MEWS",),
    "ML": ("MILL",),
    "MLS": ("MILLS",),
    "MSN": ("MISSION", "MISSN", "MSSN"),
    "MTWY": ("MOTORWAY",),
    "MT": ("MNT", "MT", "MOUNT"),
    "MTN": ("MNTAIN", "MNTN", "MOUNTAIN", "MOUNTIN", "MTIN", "MTN"),
    "MTNS": ("MNTNS", "MOUNTAINS"),
    "NCK": ("NCK", "NECK"),
    "ORCH": ("ORCH", "ORCHARD", "ORCHRD"),
    "OVAL": ("OVAL", "OVL"),
    "OPAS": ("OVERPASS",),
    "PARK": ("PARK", "PRK", "PARKS"),
    "PKWY": ("PARKWAY", "PARKWY", "PKWAY", "PKWY", "PKY", "PARKWAYS", "PKWYS"),
    "PASS": ("PASS",),
    "PSGE": ("PASSAGE",),
    "PATH": ("PATH", "PATHS"),
    "PIKE": ("PIKE", "PIKES"),
    "PNE": ("PINE",),
    "PNES": ("PINES", "PNES"),
    "PL": ("PL", "PLACE"),
    "PLN": ("PLAIN", "PLN"),
    "PLNS": ("PLAINS", "PLNS"),
    "PLZ": ("PLAZA", "PLZ", "PLZA"),
    "PT": ("POINT", "PT"),
    "PTS": ("POINTS", "PTS"),
    "PRT": ("PORT", "PRT"),
    "PRTS": ("PORTS", "PRTS"),
    "PR": ("PR", "PRAIRIE", "PRR"),
    "RADL": ("RAD", "RADIAL", "RADIEL", "RADL"),
    "RAMP": ("RAMP",),
    "RNCH": ("RANCH", "RANCHES", "RNCH", "RNCHS"),
    "RPD": ("RAPID", "RPD"),
    "RPDS": ("RAPIDS", "RPDS"),
    "RST": ("REST", "RST"),
    "RDG": ("RDG", "RDGE", "RIDGE"),
    "RDGS": ("RDGS", "RIDGES"),
    "RIV": ("RIV", "RIVER", "RVR", "RIVR"),
    "RD": ("RD", "ROAD"),
    "RDS": ("ROADS", "RDS"),
    "RTE": ("ROUTE",),
    "ROW": ("ROW",),
    "RUE": ("RUE",),
    "RUN": ("RUN",),
    "SHL": ("SHL", "SHOAL"),
    "SHLS": ("SHLS", "SHOALS"),
    "SHR": ("SHOAR", "SHORE", "SHR"),
    "SHRS": ("SHOARS", "SHORES", "SHRS"),
    "SKWY": ("SKYWAY",),
    "SPG": ("SPG", "SPNG", "SPRING", "SPRNG"),
    "SPGS": ("SPGS", "SPNGS", "SPRINGS", "SPRNGS"),
    "SPUR": ("SPUR", "SPURS"),
    "SQ": ("SQ", "SQR", "SQRE", "SQU", "SQUARE"),
    "SQS": ("SQRS", "SQUARES"),
    "STA": ("STA", "STATION", "STATN", "STN"),
    "STRA": ("STRA", "STRAV", "STRAVEN", "STRAVENUE", "STRAVN", "STRVN", "STRVNUE"),
    "STRM": ("STREAM", "STREME", "STRM"),
    "ST": ("STREET", "STRT", "ST", "STR"),
    "STS": ("STREETS",),
    "SMT": ("SMT", "SUMIT", "SUMITT", "SUMMIT"),
    "TER": ("TER", "TERR", "TERRACE"),
    "TRWY": ("THROUGHWAY",),
    "TRCE": ("TRACE", "TRACES", "TRCE"),
    "TRAK": ("TRACK", "TRACKS", "TRAK", "TRK", "TRKS"),
    "TRFY": ("TRAFFICWAY",),
    "TRL": ("TRAIL", "TRAILS", "TRL", "TRLS"),
    "TRLR": ("TRAILER", "TRLR", "TRLRS"),
    "TUNL": ("TUNEL", "TUNL", "TUNLS", "TUNNEL", "TUNNELS", "TUNNL"),
    "TPKE": ("TRNPK", "TURNPIKE", "TURNPK"),
    "UPAS": ("UNDERPASS",),
    "UN": ("UN", "UNION"),
    "UNS": ("UNIONS",),
    "VLY": ("VALLEY", "VALLY", "VLLY", "VLY"),
    "VLYS": ("VALLEYS", "VLYS"),
    "VIA": ("VDCT", "VIA", "VIADCT", "VIADUCT"),
    "VW": ("VIEW", "VW"),
    "VWS": ("VIEWS", "VWS"),
    "VLG": ("VILL", "VILLAG", "VILLAGE", "VILLG", "VILLIAGE", "VLG"),
    "VLGS": ("VILLAGES", "VLGS"),
    "VL": ("VILLE", "VL"),
    "VIS": ("VIS", "VIST", "VISTA", "VST", "VSTA"),
    "WALK": ("WALK", "WALKS"),
    "WALL": ("WALL",),
    "WAY": ("WY", "WAY"),
    "WAYS": ("WAYS",),
    "WL": ("WELL",),
    "WLS": ("WELLS",),
}
# Publication 28's primary suffix names, spelled out: words that also occur inside
# street names ("Lake City Way", "Pike St", "Court St"). Every other spelling of a
# suffix is an abbreviation ("St", "Ave"), which never does; nor do the spelled-out
# road types below. So "Pine St Jane Park" is Pine St followed by something else,
# never one street called that.
_PRIMARY_TEXT = """
ALLEY ANNEX ARCADE AVENUE BAYOU BEACH BEND BLUFF BLUFFS BOTTOM BOULEVARD BRANCH BRIDGE
BROOK BROOKS BURG BURGS BYPASS CAMP CANYON CAPE CAUSEWAY CENTER CENTERS CIRCLE CIRCLES
CLIFF CLIFFS CLUB COMMON COMMONS CORNER CORNERS COURSE COURT COURTS COVE COVES CREEK
CRESCENT CREST CROSSING CROSSROAD CROSSROADS CURVE DALE DAM DIVIDE DRIVE DRIVES ESTATE
ESTATES EXPRESSWAY EXTENSION EXTENSIONS FALL FALLS FERRY FIELD FIELDS FLAT FLATS FORD
FORDS FOREST FORGE FORGES FORK FORKS FORT FREEWAY GARDEN GARDENS GATEWAY GLEN GLENS
GREEN GREENS GROVE GROVES HARBOR HARBORS HAVEN HEIGHTS HIGHWAY HILL HILLS HOLLOW INLET
ISLAND ISLANDS ISLE JUNCTION JUNCTIONS KEY KEYS KNOLL KNOLLS LAKE LAKES LAND LANDING
LANE LIGHT LIGHTS LOAF LOCK LOCKS LODGE LOOP MALL MANOR MANORS MEADOW MEADOWS MEWS MILL
MILLS MISSION MOTORWAY MOUNT MOUNTAIN MOUNTAINS NECK ORCHARD OVAL OVERPASS PARK PARKS
PARKWAY PARKWAYS PASS PASSAGE PATH PATHS PIKE PIKES PINE PINES PLACE PLAIN PLAINS PLAZA
POINT POINTS PORT PORTS PRAIRIE RADIAL RAMP RANCH RAPID RAPIDS REST RIDGE RIDGES RIVER
ROAD ROADS ROUTE ROW RUE RUN SHOAL SHOALS SHORE SHORES SKYWAY SPRING SPRINGS SPUR SPURS
SQUARE SQUARES STATION STRAVENUE STREAM STREET STREETS SUMMIT TERRACE THROUGHWAY TRACE
TRACK TRAFFICWAY TRAIL TRAILER TUNNEL TURNPIKE UNDERPASS UNION UNIONS VALLEY VALLEYS
VIADUCT VIEW VIEWS VILLAGE VILLAGES VILLE VISTA WALK WALL WAY WAYS WELL WELLS
"""
_PRIMARY_NAMES = frozenset(_PRIMARY_TEXT.split())
_ROAD_TYPES = {"AVENUE", "BOULEVARD", "DRIVE", "DRIVES", "EXPRESSWAY", "FREEWAY",
               "HIGHWAY", "PARKWAY", "PARKWAYS", "ROAD", "ROADS", "STREET", "STREETS",
               "WAY", "WAYS"}
_NAME_SUFFIX_WORDS = _PRIMARY_NAMES - _ROAD_TYPES
SUFFIX = {spelling: standard for standard, spellings in _SUFFIXES.items()
          for spelling in spellings}

# Directionals: both spellings, to their standard abbreviation.
DIRECTIONAL = {
    "N": "N", "S": "S", "E": "E", "W": "W", "NE": "NE", "NW": "NW", "SE": "SE", "SW": "SW",
    "NORTH": "N", "SOUTH": "S", "EAST": "E", "WEST": "W", "NORTHEAST": "NE",
    "NORTHWEST": "NW", "SOUTHEAST": "SE", "SOUTHWEST": "SW",
}

MAX_NAME_WORDS = 4
_ORDINAL = re.compile(r"^(\d{1,3})(ST|ND|RD|TH)$")
_NAME_WORD = re.compile(r"^[A-Z][A-Z']*$")


@dataclass(frozen=True)
class Street:
    """A recognized street, in its standard public spelling."""

    pre: str | None
    name: tuple[str, ...]
    suffix: str
    post: str | None

    def __str__(self) -> str:
        words = [self.pre, *self.name, self.suffix.title(), self.post]
        return " ".join(w for w in words if w)


def _name_word(token: str) -> str | None:
    """A token as a word of a street's name, in public spelling; None if it can't be one."""
    upper = token.upper()
    m = _ORDINAL.match(upper)
    if m:
        return m.group(1) + m.group(2).lower()
    if not _NAME_WORD.match(upper) or upper in DIRECTIONAL:
        return None
    if upper in SUFFIX and upper not in _NAME_SUFFIX_WORDS:
        return None
    return upper[:1] + upper[1:].lower()


def parse_street(tokens: list[str]) -> Street | None:
    """The tokens as exactly one street, or None."""
    if not tokens:
        return None
    upper = [t.upper() for t in tokens]
    pre = post = None
    start, end = 0, len(tokens)
    if upper[-1] in DIRECTIONAL and end - start >= 3:
        post, end = DIRECTIONAL[upper[-1]], end - 1
    if upper[0] in DIRECTIONAL and end - start >= 3:
        pre, start = DIRECTIONAL[upper[0]], 1
    suffix = SUFFIX.get(upper[end - 1])
    body = tokens[start:end - 1]
    if suffix is None or not 1 <= len(body) <= MAX_NAME_WORDS:
        return None
    name = [_name_word(t) for t in body]
    if any(w is None for w in name):
        return None
    if any(w[0].isdigit() for w in name if w) and len(name) != 1:
        return None  # a numbered street is the number alone: "24th Ave", not "Jane 24th Ave"
    return Street(pre, tuple(w for w in name if w), suffix, post)


def longest_street_prefix(tokens: list[str]) -> tuple[Street, int] | None:
    """The longest street the tokens start with, and how many tokens it took."""
    longest = 2 + MAX_NAME_WORDS + 1  # directional, name words, suffix, directional
    for n in range(min(len(tokens), longest), 1, -1):
        street = parse_street(tokens[:n])
        if street is not None:
            return street, n
    return None
