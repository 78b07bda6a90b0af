"""The admin console's pages (/console/) and the Django admin's registrations: views, forms,
charts, read models (`selectors`) and the console's own writes (`services`)."""
